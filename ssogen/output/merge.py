"""`ssogen merge`: combine shard folders (or partial runs) of one build into one dataset folder.

Owns: checking that every folder was built with the same settings (shard fields aside) and holds only whole
chunks of them, gathering their finished chunks without duplicates, and writing the merged folder (views, card,
settings) through the same export as a build, so a merged folder has exactly the layout and schema of an
unsharded one. The merged folder keeps the chunks it took, so running the same merge again (a shard was redone,
another one finished since) resumes: a query already merged is never taken twice. It holds the lock of the
output and of every input folder while it works.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from ssogen.errors import UsageError
from ssogen.inputs.library import Templates
from ssogen.inputs.sources import load_queries
from ssogen.output.export import ExportResult, export_folder
from ssogen.output.store import SETTINGS_FILE, OutputFolder, fingerprint_changes, ids_digest

logger = logging.getLogger(__name__)

SHARD_KEYS = ("num_shards", "shard_index")


def read_settings(folder: Path) -> dict[str, Any]:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise UsageError(f"{folder} holds no {SETTINGS_FILE}; is it a folder written by `ssogen build`?")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def merge(folders: list[Path], output: Path, *, overwrite: bool = False) -> ExportResult:
    """Merge the chunks of `folders` into `output` (resuming an earlier merge there); returns the export."""
    if not folders:
        raise UsageError("merge: give at least one folder written by `ssogen build`.")
    if output.resolve() in {f.resolve() for f in folders}:
        raise UsageError(f"--output: {output} is one of the folders being merged; give a new folder.")
    settings = [read_settings(folder) for folder in folders]
    common = _common_fingerprint(folders, settings)

    merged_settings = dict(settings[0])
    merged_settings["run"] = {**common, "num_shards": 1, "shard_index": 0}
    merged_settings["settings"] = {**settings[0].get("settings", {}), "num_shards": 1, "shard_index": 0}
    merged_settings["settings"]["output"] = str(output)  # the card's snippets load the merged folder
    merged_settings["merged_from"] = len(folders)  # not in the fingerprint: a later merge may add shards
    target = OutputFolder(output)
    with ExitStack() as held:
        held.enter_context(target.lock("ssogen merge"))
        sources = [OutputFolder(folder) for folder in folders]
        for source in sources:
            held.enter_context(source.lock("ssogen merge (reading)", read_only=True))
        target.prepare(merged_settings, overwrite=overwrite)
        done = target.resume()
        before = len(done)
        for source in sources:
            _take_chunks(source, target, done)
        logger.info(
            "merged %d queries from %d folders into %s (%d were there already)",
            len(done) - before,
            len(folders),
            output,
            before,
        )
        config = merged_settings["settings"]
        prompts = Path(config["prompts"]) if config.get("prompts") else None
        return export_folder(
            target,
            _query_order(common),
            templates=Templates(prompts),
            settings=merged_settings,
            seed=int(common["seed"]),
            test_size=float(config.get("test_size", 0.05)),
            license=config.get("license", "other"),
            parent=config.get("parent"),
            card_plots=bool(config.get("card_plots", False)),
        )


def _take_chunks(source: OutputFolder, target: OutputFolder, done: set[str]) -> None:
    """Copy the rows of `source`'s chunks whose query `target` does not hold yet, one chunk per chunk."""
    for chunk in source.chunk_files():
        check = source.check_chunk(chunk, read_all=False)
        if check.problem:
            raise UsageError(
                f"merge: {chunk} {check.problem}. Run that folder's `ssogen build` command again (it sets the "
                f"chunk aside and redoes its queries), then merge again."
            )
        if done.issuperset(check.ids):
            continue
        fresh = [
            b.filter(pa.array([pid not in done for pid in b.column("prompt_id").to_pylist()]))
            for b in source.read_chunk(chunk)
        ]
        table = pa.Table.from_batches(fresh)
        if table.num_rows:
            done.update(table.column("prompt_id").to_pylist())
            target.write_chunk(table)


def _common_fingerprint(folders: list[Path], settings: list[dict[str, Any]]) -> dict[str, Any]:
    """The shared settings of all folders; refuses, naming the differences, when they disagree."""
    fingerprints = [{k: v for k, v in s.get("run", {}).items() if k not in SHARD_KEYS} for s in settings]
    first = fingerprints[0]
    for folder, other in zip(folders[1:], fingerprints[1:], strict=True):
        detail = fingerprint_changes(first, other, arrow="vs")
        if detail:
            raise UsageError(
                f"merge: {folders[0]} and {folder} were built with different settings ({detail}); "
                f"only shards or partial runs of one build can be merged."
            )
    return first


def _query_order(run: dict[str, Any]) -> list[str] | None:
    """The original query list's ids when it can be read again and is the one the shards were built from.

    None (rows ordered by prompt_id) when it cannot be read or has changed since: the shards' chunks passed
    the fingerprint check, so they only hold queries of the list they were built from.
    """
    try:
        source = None if run.get("queries") in (None, "bundled") else run["queries"]
        queries = load_queries(source, run.get("query_column"), run.get("limit"))
    except UsageError as exc:
        logger.warning("merge: the query list cannot be read again (%s); rows are ordered by prompt_id", exc)
        return None
    order = [q.prompt_id for q in queries.queries + queries.empty]
    if run.get("queries_hash") not in (None, ids_digest(order)):
        logger.warning("merge: %s changed since the shards were built; rows are ordered by prompt_id", source)
        return None
    return order
