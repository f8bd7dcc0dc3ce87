"""`ssogen merge`: combine shard folders (or partial runs) of one build into one dataset folder.

Owns: checking that every folder was built with the same settings (shard fields aside), gathering their
finished chunks without duplicates, and writing the merged folder (views, card, settings) through the same
export as a build, so a merged folder has exactly the layout and schema of an unsharded one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from ssogen.errors import UsageError
from ssogen.export import export_folder
from ssogen.library import Templates
from ssogen.sources import load_queries
from ssogen.store import CHUNK_SCHEMA, SETTINGS_FILE, OutputFolder, fingerprint_changes

logger = logging.getLogger(__name__)

SHARD_KEYS = ("num_shards", "shard_index")


def read_settings(folder: Path) -> dict[str, Any]:
    path = folder / SETTINGS_FILE
    if not path.is_file():
        raise UsageError(f"{folder} holds no {SETTINGS_FILE}; is it a folder written by `ssogen build`?")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def merge(folders: list[Path], output: Path, *, overwrite: bool = False) -> dict[str, dict[str, int]]:
    """Merge the chunks of `folders` into `output`; returns {config: {split: rows}}."""
    if not folders:
        raise UsageError("merge: give at least one folder written by `ssogen build`.")
    if output.resolve() in {f.resolve() for f in folders}:
        raise UsageError(f"--output: {output} is one of the folders being merged; give a new folder.")
    settings = [read_settings(folder) for folder in folders]
    common = _common_fingerprint(folders, settings)

    merged_settings = dict(settings[0])
    merged_settings["run"] = {**common, "num_shards": 1, "shard_index": 0, "merged_from": len(folders)}
    merged_settings["settings"] = {**settings[0].get("settings", {}), "num_shards": 1, "shard_index": 0}
    merged_settings["settings"]["output"] = str(output)  # the card's snippets load the merged folder
    target = OutputFolder(output)
    target.prepare(merged_settings, overwrite=overwrite)

    seen: set[str] = set()
    index = target.next_chunk_index()
    for folder in folders:
        for chunk in OutputFolder(folder).chunk_files():
            rows = [r for r in pq.read_table(chunk, schema=CHUNK_SCHEMA).to_pylist() if r["prompt_id"] not in seen]
            seen.update(r["prompt_id"] for r in rows)
            if rows:
                target.write_chunk(index, rows)
                index += 1
    logger.info("merged %d queries from %d folders into %s", len(seen), len(folders), output)

    kept, dropped = target.split_chunks(_query_order(common, seen))
    config = merged_settings["settings"]
    prompts = Path(config["prompts"]) if config.get("prompts") else None
    return export_folder(
        target,
        kept,
        dropped,
        templates=Templates(prompts),
        settings=merged_settings,
        seed=int(common["seed"]),
        test_size=float(config.get("test_size", 0.05)),
        license=config.get("license", "other"),
        parent=config.get("parent"),
        card_plots=bool(config.get("card_plots", False)),
    )


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


def _query_order(run: dict[str, Any], ids: set[str]) -> list[str]:
    """Rows in the order of the original query list when it can be read again, else by id."""
    try:
        source = None if run.get("queries") in (None, "bundled") else run["queries"]
        queries = load_queries(source, run.get("query_column"), run.get("limit"))
        order = [q.prompt_id for q in queries.queries + queries.empty]
    except UsageError:
        order = []
    known = set(order)
    return order + sorted(ids - known)
