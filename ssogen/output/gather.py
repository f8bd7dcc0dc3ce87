"""Read the finished chunks back in the order of the query list, a bounded number of rows at a time.

Owns: choosing the rows an export holds — one per prompt_id (the first written copy, so duplicates from an
older version or a hand copy can never be exported twice), none of a query that is not in the input — and
delivering them in query order whatever order the chunks were written in, with memory bounded by a fixed
number of bytes rather than by the size of the data.

How: a first pass reads only the ids of every chunk and decides which row of which chunk goes where. A second
pass reads the chunks a batch at a time and writes each chosen row into the bucket of its place in the order
(temporary Parquet files, ``bucket_bytes`` of rows each). The buckets are then read back one by one, sorted
in memory and handed out. Every row is read twice and written once more, whatever the layout of the chunks
(shards merged, chunks written in completion order), and memory holds one bucket.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ssogen.errors import SsogenError
from ssogen.files import writing
from ssogen.output.store import CHUNK_SCHEMA, OutputFolder

BUCKET_BYTES = 64 * 2**20
_POSITION = "__position"


class DamagedChunk(SsogenError):
    """A chunk failed to read during the export (set aside; a re-run redoes its queries)."""


@dataclass
class Gathered:
    """What the export left out, counted while the chunks were read."""

    rows: int = 0  # rows handed out
    duplicates: int = 0  # rows of a prompt_id already taken from an earlier chunk
    unknown: int = 0  # rows of a prompt_id that is not in the query list
    unknown_ids: set[str] = field(default_factory=set)


def gather(
    folder: OutputFolder,
    order: Sequence[str] | None,
    work: Path,
    stats: Gathered,
    *,
    bucket_bytes: int = BUCKET_BYTES,
) -> Iterator[pa.Table]:
    """Yield the chunks' rows (`CHUNK_SCHEMA` tables of at most about `bucket_bytes`) in the order of `order`.

    ``order`` is the query list's prompt_ids; None orders by prompt_id (the query list cannot be read again).
    ``work`` is an empty folder for the buckets; it is removed at the end.
    """
    files = folder.chunk_files()
    ids = [_ids(folder, path) for path in files]
    if order is None:
        order = sorted({pid for file_ids in ids for pid in file_ids})
    rank = {pid: i for i, pid in enumerate(order)}
    chosen: list[tuple[list[int], list[int]]] = []  # per chunk: (row numbers, their places in the order)
    taken: set[str] = set()
    for file_ids in ids:
        rows, places = [], []
        for row, pid in enumerate(file_ids):
            if pid not in rank:
                stats.unknown += 1
                stats.unknown_ids.add(pid)
            elif pid in taken:
                stats.duplicates += 1
            else:
                taken.add(pid)
                rows.append(row)
                places.append(rank[pid])
        chosen.append((rows, places))
    del ids, taken
    per_bucket = max(1, bucket_bytes // _mean_row_bytes(files))
    buckets: set[int] = set()
    try:
        for number, (path, (rows, places)) in enumerate(zip(files, chosen, strict=True)):
            if rows:
                buckets |= _distribute(folder, path, number, rows, places, per_bucket, work)
        for bucket in sorted(buckets):
            parts = sorted((work / str(bucket)).glob("*.parquet"))
            with writing(work):
                table = pa.concat_tables([pq.read_table(p) for p in parts])
                shutil.rmtree(work / str(bucket))  # the disk it used is free again for the export
            table = table.take(pc.sort_indices(table[_POSITION])).drop_columns([_POSITION])
            stats.rows += table.num_rows
            yield table
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ids(folder: OutputFolder, path: Path) -> list[str]:
    try:
        return pq.read_table(path, columns=["prompt_id"]).column("prompt_id").to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise _damaged(folder, path, exc) from exc


def _damaged(folder: OutputFolder, path: Path, exc: BaseException) -> DamagedChunk:
    """Set a chunk that failed to read aside; the error says so and how to redo its queries."""
    problem = f"is damaged: {exc}".splitlines()[0]
    moved = folder.put_aside(path, problem)
    return DamagedChunk(
        f"chunk {path} could not be read during the export ({problem}); it was moved to {moved}: "
        f"run the same command again to redo its queries"
    )


def _mean_row_bytes(files: list[Path]) -> int:
    """Uncompressed bytes per row of the chunks, from their footers."""
    rows = size = 0
    for path in files:
        meta = pq.ParquetFile(path).metadata
        rows += meta.num_rows
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return max(1, size // max(rows, 1))


def _distribute(
    folder: OutputFolder, path: Path, number: int, rows: list[int], places: list[int], per_bucket: int, work: Path
) -> set[int]:
    """Write the chosen rows of one chunk into the buckets of their places; returns the buckets touched."""
    wanted = dict(zip(rows, places, strict=True))
    touched: set[int] = set()
    start = 0
    try:
        for batch in folder.read_chunk(path, batch_rows=max(1, min(per_bucket, 4096))):
            picked = [i for i in range(batch.num_rows) if start + i in wanted]
            where = [wanted[start + i] for i in picked]
            start += batch.num_rows
            if not picked:
                continue
            table = pa.Table.from_batches([batch]).take(picked).cast(CHUNK_SCHEMA)
            table = table.append_column(_POSITION, pa.array(where, pa.int64()))
            of_bucket = pc.divide(table[_POSITION], per_bucket)
            for bucket in sorted(set(of_bucket.to_pylist())):
                part = table.filter(pc.equal(of_bucket, bucket))
                target = work / str(bucket) / f"{number:08d}-{start:010d}.parquet"
                with writing(target, "exporting"):
                    target.parent.mkdir(parents=True, exist_ok=True)
                    pq.write_table(part, target)
                touched.add(bucket)
    except (OSError, pa.ArrowException) as exc:  # writes fail as WriteError (not an OSError): this is a read
        raise _damaged(folder, path, exc) from exc
    return touched
