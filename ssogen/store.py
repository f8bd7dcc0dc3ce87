"""The output folder's working state: the settings file, finished chunks, and the final `sso` table.

Owns: the explicit Parquet schema of a record, atomic chunk writes (written beside, then renamed, so
a kill at any instant leaves only whole chunks), reading back what earlier runs finished (resume),
the settings file ``ssogen.yaml`` and the check that a re-run uses the same settings, and
consolidating the chunks into ``data/sso`` and ``data/dropped``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ssogen.errors import UsageError

SETTINGS_FILE = "ssogen.yaml"
_UMASK = os.umask(0)
os.umask(_UMASK)
CHUNKS_DIR = ".ssogen/chunks"

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_PER_ROLE = [
    (f"{prefix}_{role}", kind)
    for prefix, kind in (("logp", pa.float64()), ("tokens", pa.int32()), ("finish", pa.string()))
    for role in ("chosen", "rejected", "original")
]
RECORD_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("system", pa.string()),  # the query's own system turn ("" when it had none)
        ("context", pa.list_(_MESSAGE)),
        ("features", pa.list_(pa.string())),
        ("principle_source", pa.string()),
        ("system_pos", pa.string()),
        ("system_neg", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("original", pa.string()),
        *_PER_ROLE,
        # An answer judged a degenerate loop (stopped by the engine's repetition check, or found by
        # `ssogen.quality` after it ended); a kept row can only have a degenerate y- (the rejected side).
        *[(f"degenerate_{role}", pa.bool_()) for role in ("chosen", "rejected", "original")],
        # The model's chat template has no system role, so p+ / p- went into the first user turn.
        ("steering_in_user", pa.bool_()),
        ("truncated", pa.bool_()),
        ("weight", pa.float64()),
        ("alpha", pa.float64()),
        ("model", pa.string()),
        ("round", pa.int32()),
    ]
)
# A chunk holds kept and dropped queries alike; drop_reason is null for a kept one.
CHUNK_SCHEMA = RECORD_SCHEMA.append(pa.field("drop_reason", pa.string()))
DROPPED_SCHEMA = pa.schema(
    [("prompt_id", pa.string()), ("prompt", pa.string()), ("reason", pa.string()), ("features", pa.list_(pa.string()))]
)


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any], arrow: str = "->") -> str:
    """'key: old -> new, …' for every setting that differs; empty when none does."""
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} {arrow} {new.get(k)!r}" for k in changed)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    # mkstemp creates 0600 files; a dataset folder is meant to be read by others (and uploaded).
    os.chmod(tmp, 0o644 & ~_UMASK)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


class OutputFolder:
    """One build's output folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks = root / CHUNKS_DIR

    # --- settings ---------------------------------------------------------------------------------
    def prepare(self, settings: dict[str, Any], overwrite: bool) -> None:
        """Create the folder, or check that an existing one was built with the same settings.

        ``settings["run"]`` is the fingerprint: the values that decide the data, which a resume must match.
        """
        fingerprint = settings["run"]
        settings_path = self.root / SETTINGS_FILE
        if overwrite and settings_path.exists():
            # Only a folder ssogen built (it has the settings file) is ever deleted.
            shutil.rmtree(self.root)
        if settings_path.exists():
            previous = yaml.safe_load(settings_path.read_text(encoding="utf-8")) or {}
            detail = fingerprint_changes(previous.get("run", {}), fingerprint)
            if detail:
                raise UsageError(
                    f"--output: {self.root} was built with other settings ({detail}). "
                    f"Use another --output, or --overwrite to start it afresh."
                )
        elif self.root.exists() and any(self.root.iterdir()):
            raise UsageError(
                f"--output: {self.root} is not empty and holds no {SETTINGS_FILE}; "
                f"use another folder (ssogen only replaces folders it built)."
            )
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(settings_path, yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).encode())

    # --- chunks -----------------------------------------------------------------------------------
    def chunk_files(self) -> list[Path]:
        return sorted(self.chunks.glob("chunk-*.parquet"))

    def finished_ids(self) -> set[str]:
        done: set[str] = set()
        for path in self.chunk_files():
            done.update(pq.read_table(path, columns=["prompt_id"]).column("prompt_id").to_pylist())
        return done

    def next_chunk_index(self) -> int:
        files = self.chunk_files()
        return int(files[-1].stem.split("-")[1]) + 1 if files else 0

    def write_chunk(self, index: int, rows: Iterable[dict[str, Any]]) -> Path:
        path = self.chunks / f"chunk-{index:05d}.parquet"
        write_table(path, pa.Table.from_pylist(list(rows), schema=CHUNK_SCHEMA))
        return path

    def read_chunks(self) -> pa.Table:
        tables = [pq.read_table(p, schema=CHUNK_SCHEMA) for p in self.chunk_files()]
        return pa.concat_tables(tables) if tables else CHUNK_SCHEMA.empty_table()

    # --- final tables -----------------------------------------------------------------------------
    def split_chunks(self, order: list[str]) -> tuple[pa.Table, pa.Table]:
        """(kept records, dropped rows) of every chunk, in the order of the query list."""
        table = self.read_chunks()
        rank = {pid: i for i, pid in enumerate(order)}
        rows = sorted(table.to_pylist(), key=lambda r: rank.get(r["prompt_id"], len(rank)))
        kept = [{k: v for k, v in r.items() if k != "drop_reason"} for r in rows if r["drop_reason"] is None]
        dropped = [
            {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "reason": r["drop_reason"], "features": r["features"]}
            for r in rows
            if r["drop_reason"] is not None
        ]
        return (
            pa.Table.from_pylist(kept, schema=RECORD_SCHEMA),
            pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA),
        )

    def write_config(self, config: str, split: str, table: pa.Table) -> Path:
        """Write one dataset config/split as ``data/<config>/<split>-00000-of-00001.parquet``."""
        folder = self.root / "data" / config
        for stale in folder.glob(f"{split}-*.parquet"):
            stale.unlink()
        path = folder / f"{split}-00000-of-00001.parquet"
        write_table(path, table)
        return path
