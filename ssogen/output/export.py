"""Write the finished dataset folder in the Hub's layout, from the saved chunks, streamed and swapped in whole.

Owns: ``data/<config>/<split>-0000k-of-0000n.parquet`` for every view — rows in the order of the query list,
one per prompt_id, written a bounded number of rows at a time (`ssogen.output.gather`), a new file past
`ExportLimits.file_bytes` on disk, row groups of at most about `ExportLimits.row_group_bytes` — and the
LLaMA-Factory ``dataset_info.json`` and the dataset card ``README.md``. Everything is written into a staging
folder beside the previous export and swapped in at the end (`ssogen.output.swap`): a kill or a failed write leaves
the previous export as it was. Everything here derives from the chunks and the settings, so running it twice
gives the same folder.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ssogen.errors import WriteError
from ssogen.files import atomic_write_bytes, fsync_file, writing
from ssogen.inputs.library import Templates
from ssogen.output import swap
from ssogen.output.card import render_card
from ssogen.output.gather import BUCKET_BYTES, Gathered, gather
from ssogen.output.store import (
    DROPPED_ANSWERS,
    DROPPED_SCHEMA,
    RECORD_SCHEMA,
    ROW_GROUP_BYTES,
    SETTINGS_FILE,
    OutputFolder,
    rows_per_group,
)
from ssogen.output.views import VIEWS, llamafactory_dataset_info, split_of, view_tables

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
# The Hub's own Parquet files (and `datasets`' push_to_hub) are cut at about 500 MB.
FILE_BYTES = 500 * 10**6
# Columns the card needs of every kept row; the long texts are only needed of its three examples.
_TEXT_COLUMNS = {"prompt", "context", "system_pos", "system_neg", "chosen", "rejected", "original"}
_CARD_COLUMNS = [name for name in RECORD_SCHEMA.names if name not in _TEXT_COLUMNS]
_EXAMPLES = 3


@dataclass(frozen=True)
class ExportLimits:
    """Sizes that bound the export's files and its memory (tests make them small)."""

    file_bytes: int = FILE_BYTES  # a split's file is closed once it is this large on disk
    row_group_bytes: int = ROW_GROUP_BYTES  # uncompressed bytes per row group, at most about
    bucket_bytes: int = BUCKET_BYTES  # uncompressed bytes of rows held at a time (`ssogen.output.gather`)


@dataclass
class ExportResult:
    """What an export wrote: rows and files per config and split, and the figures of the build's summary."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    mean_weight: float = math.nan
    duplicates: int = 0
    unknown: int = 0


def export_folder(
    folder: OutputFolder,
    order: Sequence[str] | None,
    *,
    templates: Templates,
    settings: dict[str, Any],
    seed: int,
    test_size: float,
    license: str = "other",
    repo_id: str | None = None,
    parent: str | None = None,
    card_plots: bool = False,
    limits: ExportLimits = ExportLimits(),
) -> ExportResult:
    """Write every view of the folder's chunks, dataset_info.json and the card, then swap them in.

    ``order`` is the query list's prompt_ids: rows follow it, and rows of any other id are left out (and
    counted). None orders rows by prompt_id (for a merge whose query list cannot be read again).
    """
    staging = swap.staging_dir(folder.root)
    if (folder.root / "audit.yaml").is_file():
        logger.warning(
            "the audit of %s judged its previous export and is removed with it; run `ssogen audit %s` again",
            folder.root,
            folder.root,
        )
    try:
        result, card = _write(folder, order, staging, seed, test_size, limits)
        _write_card(folder, staging, result, card, templates, settings, license, repo_id, parent, card_plots)
        swap.commit(folder.root)
    except WriteError as exc:
        swap.discard(folder.root)
        raise WriteError(f"{exc}; the export was abandoned and the folder's previous export is unchanged") from exc
    except BaseException:
        swap.discard(folder.root)
        raise
    if result.duplicates:
        logger.warning(
            "%d duplicate rows (a prompt_id already exported) were left out of the export: the first written "
            "copy of each query is kept",
            result.duplicates,
        )
    if result.unknown:
        logger.warning(
            "%d rows of queries that are not in the input were left out of the export (they stay in %s)",
            result.unknown,
            folder.chunks,
        )
    return result


class _Card:
    """The kept rows' figures the card needs (small columns of every row, texts of the first three)."""

    def __init__(self) -> None:
        self.small: list[pa.Table] = []
        self.examples: list[pa.Table] = []
        self.dropped: list[pa.Table] = []

    def add(self, kept: pa.Table, dropped: pa.Table) -> None:
        self.small.append(kept.select(_CARD_COLUMNS))
        have = sum(t.num_rows for t in self.examples)
        if have < _EXAMPLES and kept.num_rows:
            self.examples.append(kept.slice(0, _EXAMPLES - have))
        # The card counts drop reasons; the dropped prompts themselves are not needed.
        self.dropped.append(dropped.set_column(1, "prompt", pa.nulls(dropped.num_rows, pa.string())))

    def records(self) -> pa.Table:
        small = pa.concat_tables(self.small) if self.small else RECORD_SCHEMA.empty_table().select(_CARD_COLUMNS)
        examples = pa.concat_tables(self.examples) if self.examples else RECORD_SCHEMA.empty_table()
        columns = []
        for f in RECORD_SCHEMA:
            if f.name in _CARD_COLUMNS:
                columns.append(small[f.name])
            else:
                rest = pa.nulls(small.num_rows - examples.num_rows, f.type)
                columns.append(pa.chunked_array([*examples[f.name].chunks, rest], f.type))
        return pa.Table.from_arrays(columns, schema=RECORD_SCHEMA)

    def dropped_table(self) -> pa.Table:
        return pa.concat_tables(self.dropped) if self.dropped else DROPPED_SCHEMA.empty_table()


class SplitFiles:
    """One config's split as Parquet files: Hub names, a new file past a size on disk, bounded row groups."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, limits: ExportLimits) -> None:
        self.folder, self.split, self.schema, self.limits = folder, split, schema, limits
        self.parts: list[Path] = []
        self.rows = 0
        self._sink: pa.NativeFile | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        if self._writer is None:
            # Named once the number of files is known; until then `<split>-0000k.parquet.part`.
            path = self.folder / f"{self.split}-{len(self.parts):05d}.parquet.part"
            with writing(path, "exporting"):
                path.parent.mkdir(parents=True, exist_ok=True)
                self._sink = pa.OSFile(str(path), "wb")
                self._writer = pq.ParquetWriter(self._sink, self.schema)
            self.parts.append(path)
        assert self._sink is not None
        with writing(self.parts[-1], "exporting"):
            self._writer.write_table(table, row_group_size=rows_per_group(table, self.limits.row_group_bytes))
            full = self._sink.tell() >= self.limits.file_bytes
        self.rows += table.num_rows
        if full:
            self._close_part()

    def _close_part(self) -> None:
        if self._writer is None or self._sink is None:
            return
        with writing(self.parts[-1], "exporting"):
            self._writer.close()
            self._sink.close()
            fsync_file(self.parts[-1])
        self._writer = self._sink = None

    def finish(self) -> list[str]:
        """Close the last file and give every file its Hub name ``<split>-0000k-of-0000n.parquet``."""
        self._close_part()
        names = []
        for k, part in enumerate(self.parts):
            name = f"{self.split}-{k:05d}-of-{len(self.parts):05d}.parquet"
            with writing(part, "exporting"):
                part.rename(part.with_name(name))
            names.append(name)
        return names


def _write(
    folder: OutputFolder,
    order: Sequence[str] | None,
    staging: Path,
    seed: int,
    test_size: float,
    limits: ExportLimits,
) -> tuple[ExportResult, _Card]:
    data = staging / "data"
    writers: dict[tuple[str, str], SplitFiles] = {}

    def put(config: str, split: str, table: pa.Table) -> None:
        if (config, split) not in writers:
            writers[config, split] = SplitFiles(data / config, split, table.schema, limits)
        writers[config, split].write(table)

    stats, card = Gathered(), _Card()
    for table in gather(folder, order, staging / "buckets", stats, bucket_bytes=limits.bucket_bytes):
        is_kept = pc.is_null(table["drop_reason"])
        kept = table.filter(is_kept).select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
        gone = table.filter(pc.invert(is_kept))
        dropped = pa.Table.from_arrays(
            [gone[name] for name in ("prompt_id", "prompt", "drop_reason", "features", *DROPPED_ANSWERS)],
            schema=DROPPED_SCHEMA,
        )
        del table, gone
        card.add(kept, dropped)
        put("dropped", "train", dropped)
        # The split is decided per query, so every view (and every resume, shard and merge) agrees on it.
        splits = pa.array([split_of(pid, seed, test_size) for pid in kept["prompt_id"].to_pylist()], pa.string())
        for split in ("train", "test"):
            part = kept.filter(pc.equal(splits, split))
            if part.num_rows:
                for name, view in view_tables(part):
                    put(name, split, view)

    result = ExportResult(duplicates=stats.duplicates, unknown=stats.unknown)
    # `datasets` cannot load a split from a Parquet file without rows, so empty splits and configs are left out.
    for name in [*VIEWS, "dropped"]:
        for split in ("train", "test"):
            if (name, split) in writers and writers[name, split].rows:
                result.files.setdefault(name, {})[split] = writers[name, split].finish()
                result.counts.setdefault(name, {})[split] = writers[name, split].rows
    result.kept = sum(t.num_rows for t in card.small)
    result.dropped = Counter(reason for t in card.dropped for reason in t.column("reason").to_pylist())
    if result.kept:
        result.mean_weight = sum(pc.sum(t["weight"]).as_py() or 0.0 for t in card.small) / result.kept
    return result, card


def _write_card(
    folder: OutputFolder,
    staging: Path,
    result: ExportResult,
    card: _Card,
    templates: Templates,
    settings: dict[str, Any],
    license: str,
    repo_id: str | None,
    parent: str | None,
    card_plots: bool,
) -> None:
    reference = {
        split: [f"data/sso_reference/{name}" for name in names]
        for split, names in result.files.get("sso_reference", {}).items()
    }
    info = llamafactory_dataset_info(reference)
    atomic_write_bytes(staging / "dataset_info.json", (json.dumps(info, indent=2) + "\n").encode())
    plots: list[str] = []
    if card_plots:
        from ssogen.output.plots import render_plots
        from ssogen.output.readback import load_build

        if (folder.root / SETTINGS_FILE).is_file():  # read by load_build for the labels; not swapped in
            atomic_write_bytes(staging / SETTINGS_FILE, (folder.root / SETTINGS_FILE).read_bytes())
        written = render_plots(load_build(str(staging)), staging / PLOTS_DIR)
        plots = [f"{PLOTS_DIR}/{path.name}" for path in written.values()]
    text = render_card(
        templates,
        records=card.records(),
        dropped=card.dropped_table(),
        counts=result.counts,
        settings=settings,
        repo_id=repo_id,
        parent=parent,
        license=license,
        plots=plots,
    )
    atomic_write_bytes(staging / "README.md", text.encode("utf-8"))
