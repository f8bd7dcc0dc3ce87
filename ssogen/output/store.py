"""The output folder's working state: its lock, the settings file and the finished chunks.

Owns: the explicit Parquet schema of a record; the settings file ``ssogen.yaml`` and the check that a re-run
uses the same settings; atomic chunk writes (written beside, then renamed, so a kill at any instant leaves only
whole chunks), each chunk stamped with what wrote it (ssogen version, record schema, settings); and, before a
run resumes, checking every chunk: a damaged one (truncated, not Parquet) or a foreign one (other settings,
another ssogen version or schema) is named, moved to ``.ssogen/set-aside/`` (never deleted) and its queries are
done again. Exporting the chunks is `ssogen.output.export`; the lock is `ssogen.output.lock`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ssogen import __version__
from ssogen.errors import UsageError
from ssogen.files import atomic_path, atomic_write_bytes, writing
from ssogen.output import swap
from ssogen.output.lock import LOCK_FILE, folder_lock

__all__ = ["CHUNK_SCHEMA", "DROPPED_SCHEMA", "RECORD_SCHEMA", "OutputFolder", "atomic_write_bytes"]

logger = logging.getLogger(__name__)

SETTINGS_FILE = "ssogen.yaml"
CHUNKS_DIR = ".ssogen/chunks"
SET_ASIDE_DIR = ".ssogen/set-aside"
# Row groups of every Parquet file ssogen writes stay under this many bytes (uncompressed), far below what the
# Hub's dataset viewer refuses (about 286 MB): readers can then take a file a bounded piece at a time.
ROW_GROUP_BYTES = 64 * 2**20
_CHUNK_NAME = re.compile(r"^chunk-(\d+)\.parquet$")
_META_KEY = b"ssogen"

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
        # `ssogen.generation.quality` after it ended); a kept row can only have a degenerate y- (the rejected side).
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
# A query dropped after its answers were sampled keeps them (a loop, an empty or a repeated answer can be read
# there); one dropped before (too long, empty) has none.
DROPPED_ANSWERS = [f"{prefix}{role}" for prefix in ("", "finish_") for role in ("chosen", "rejected", "original")]
DROPPED_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("reason", pa.string()),
        ("features", pa.list_(pa.string())),
        *[(name, pa.string()) for name in DROPPED_ANSWERS],
    ]
)


def digest(value: Any) -> str:
    """A short stable hash of plain data (settings) or of a sequence of ids."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ids_digest(ids: Iterable[str]) -> str:
    """The hash of a query list: its prompt ids, in order (so a removed, added or reordered query changes it)."""
    hasher = hashlib.sha256()
    for prompt_id in ids:
        hasher.update(prompt_id.encode() + b"\n")
    return hasher.hexdigest()[:16]


# What wrote a chunk: compared with the folder's own at resume, so chunks of two versions never mix.
SCHEMA_DIGEST = digest(str(CHUNK_SCHEMA))


def fingerprint_changes(old: dict[str, Any], new: dict[str, Any], arrow: str = "->") -> str:
    """'key: old -> new, …' for every setting that differs; empty when none does."""
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} {arrow} {new.get(k)!r}" for k in changed)


def _change_hints(old: dict[str, Any], new: dict[str, Any]) -> str:
    hints = []
    if old.get("queries_hash") != new.get("queries_hash"):
        hints.append("the queries are not the same ones (their content, their order or --limit changed)")
    if old.get("ssogen_version") != new.get("ssogen_version"):
        hints.append(f"it was built by ssogen {old.get('ssogen_version')}, this is {new.get('ssogen_version')}")
    return "".join(f"; {hint}" for hint in hints)


def rows_per_group(table: pa.Table, limit: int = ROW_GROUP_BYTES) -> int:
    """How many rows of `table` make a row group of at most about `limit` bytes."""
    return max(1, table.num_rows * limit // max(table.nbytes, 1))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__


@dataclass
class ChunkCheck:
    """What a chunk file holds, or why it cannot be used (`problem`)."""

    problem: str | None = None
    ids: list[str] = field(default_factory=list)


class OutputFolder:
    """One build's output folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.chunks = self.root / CHUNKS_DIR
        self.set_aside = self.root / SET_ASIDE_DIR
        self._run: dict[str, Any] | None = None
        self._next_index: int | None = None
        self._index_guard = threading.Lock()

    # --- one writer per folder ---------------------------------------------------------------------
    @contextmanager
    def lock(self, command: str, *, read_only: bool = False) -> Iterator[None]:
        """Hold the folder's exclusive lock (`ssogen.output.lock`); a second process stops at once with exit 2.

        Under the lock, an export that a kill interrupted is finished or removed first (`ssogen.output.swap`).
        ``read_only``: the command only reads the folder (push, merge's inputs).
        """
        if not read_only:
            self.refuse_foreign()  # before anything is created in a folder ssogen did not build
        created = not self.root.exists()
        with folder_lock(self.root, command, read_only=read_only):
            try:
                if (self.root / swap.STAGING).exists():
                    swap.recover(self.root)
                yield
            finally:
                if created:  # a command that stopped before writing leaves no folder behind
                    self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        lock = self.root / LOCK_FILE
        if [p.name for p in self.root.iterdir()] == [".ssogen"] and list(lock.parent.iterdir()) == [lock]:
            with suppress(OSError):
                lock.unlink()
                lock.parent.rmdir()
                self.root.rmdir()

    def refuse_foreign(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--output: {self.root} is a file; give a folder.")
        if self._foreign():
            raise UsageError(
                f"--output: {self.root} is not empty and holds no {SETTINGS_FILE}; "
                f"use another folder (ssogen only replaces folders it built)."
            )

    def _foreign(self) -> bool:
        """A non-empty folder that ssogen did not build (its own .ssogen/ aside, e.g. a lock)."""
        if not self.root.is_dir() or (self.root / SETTINGS_FILE).exists():
            return False
        return any(p.name != ".ssogen" for p in self.root.iterdir())

    # --- settings ---------------------------------------------------------------------------------
    def prepare(self, settings: dict[str, Any], overwrite: bool) -> None:
        """Create the folder, or check that an existing one was built with the same settings.

        ``settings["run"]`` is the fingerprint: the values that decide the data, which a resume must match.
        """
        fingerprint = settings["run"]
        settings_path = self.root / SETTINGS_FILE
        if overwrite and settings_path.exists():
            # Only a folder ssogen built (it has the settings file) is ever emptied.
            self._clear()
        if settings_path.exists():
            previous = yaml.safe_load(settings_path.read_text(encoding="utf-8")) or {}
            detail = fingerprint_changes(previous.get("run", {}), fingerprint)
            if detail:
                raise UsageError(
                    f"--output: {self.root} was built with other settings ({detail})"
                    f"{_change_hints(previous.get('run', {}), fingerprint)}. "
                    f"Use another --output, or --overwrite to start it afresh."
                )
        elif self._foreign():
            self.refuse_foreign()
        text = yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).encode()
        with writing(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            unchanged = settings_path.is_file() and settings_path.read_bytes() == text
        if not unchanged:  # a read-only folder that is already right needs no write
            atomic_write_bytes(settings_path, text)
        # As read back, so the hash stamped on chunks matches the one computed from the file later.
        self._run = yaml.safe_load(text)["run"]

    def _clear(self) -> None:
        """Delete everything in the folder but its lock file (which the caller holds)."""
        with writing(self.root, "--overwrite"):
            for item in self.root.iterdir():
                if item.name == ".ssogen":
                    for inner in item.iterdir():
                        if inner.name != "lock":
                            shutil.rmtree(inner) if inner.is_dir() else inner.unlink()
                else:
                    shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()

    @property
    def run_digest(self) -> str:
        """The hash of the folder's fingerprint, stamped on every chunk it holds."""
        if self._run is None:
            path = self.root / SETTINGS_FILE
            if not path.is_file():
                raise UsageError(f"{self.root} holds no {SETTINGS_FILE}; is it a folder written by `ssogen build`?")
            self._run = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("run", {})
        return digest(self._run)

    # --- chunks -----------------------------------------------------------------------------------
    def chunk_files(self) -> list[Path]:
        """The finished chunks, in the order they were written (numbered; sorted as numbers at any count)."""
        found = [(int(m[1]), p) for p in self.chunks.glob("chunk-*.parquet") if (m := _CHUNK_NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def write_chunk(self, rows: Iterable[dict[str, Any]] | pa.Table) -> Path:
        """Save one finished chunk (row dicts of `CHUNK_SCHEMA`, or such a table) as the next chunk file."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=CHUNK_SCHEMA)
        table = table.select(CHUNK_SCHEMA.names).cast(CHUNK_SCHEMA)
        stamp = {"version": __version__, "schema": SCHEMA_DIGEST, "run": self.run_digest}
        table = table.replace_schema_metadata({_META_KEY: json.dumps(stamp).encode()})
        with self._index_guard:
            if self._next_index is None:
                self._next_index = self._last_index() + 1
            index = self._next_index
            self._next_index += 1
        # Eight digits: names sort in a listing up to 10^8 chunks; ssogen itself sorts them as numbers.
        path = self.chunks / f"chunk-{index:08d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=rows_per_group(table), write_page_checksum=True)
        return path

    def _last_index(self) -> int:
        """The highest chunk number used, set-aside chunks included (so a new chunk never reuses a name)."""
        names = [p.name for p in self.chunks.glob("chunk-*")] + [p.name for p in self.set_aside.glob("chunk-*")]
        numbers = [int(m[1]) for name in names if (m := re.match(r"chunk-(\d+)\.", name))]
        return max(numbers, default=-1)

    def read_chunk(self, path: Path, batch_rows: int = 1024) -> Iterator[pa.RecordBatch]:
        """A chunk's rows, `batch_rows` at a time (page checksums verified)."""
        yield from pq.ParquetFile(path, page_checksum_verification=True).iter_batches(batch_size=batch_rows)

    def check_chunk(self, path: Path, *, read_all: bool = True) -> ChunkCheck:
        """Whether `path` is a whole chunk of this folder's settings, written by this ssogen; its ids if so.

        ``read_all`` decodes every column (a damaged page fails here, not at the export); else only the ids.
        """
        if not _CHUNK_NAME.match(path.name):
            return ChunkCheck("is not named like a chunk ssogen writes (chunk-<number>.parquet)")
        try:
            parquet = pq.ParquetFile(path, page_checksum_verification=True)
            stamp = json.loads((parquet.schema_arrow.metadata or {}).get(_META_KEY, b"null"))
        except Exception as exc:
            return ChunkCheck(f"is damaged: not readable as Parquet (truncated, or not Parquet): {_first_line(exc)}")
        if not isinstance(stamp, dict):
            return ChunkCheck("was not written by this version of ssogen (it does not say what wrote it)")
        if stamp.get("version") != __version__:
            return ChunkCheck(f"was written by ssogen {stamp.get('version')} (this is ssogen {__version__})")
        if stamp.get("schema") != SCHEMA_DIGEST or not parquet.schema_arrow.remove_metadata().equals(CHUNK_SCHEMA):
            return ChunkCheck("has another record schema than this ssogen writes")
        if stamp.get("run") != self.run_digest:
            return ChunkCheck(f"belongs to other settings (run {stamp.get('run')}; this folder's is {self.run_digest})")
        ids: list[str] = []
        try:
            columns = None if read_all else ["prompt_id"]
            for batch in parquet.iter_batches(batch_size=1024, columns=columns):
                ids.extend(batch.column("prompt_id").to_pylist())
        except Exception as exc:
            return ChunkCheck(f"is damaged: {_first_line(exc)}")
        return ChunkCheck(ids=ids)

    def resume(self) -> set[str]:
        """Check every chunk before a run goes on; returns the prompt_ids they finish.

        A chunk that is damaged or foreign is named in the log and moved to ``.ssogen/set-aside/``; its queries
        are then done again. Hidden temporary files of writes that a kill cut short are removed.
        """
        for partial in self.chunks.glob(".chunk-*"):
            with suppress(OSError):
                partial.unlink()
        done: set[str] = set()
        for path in sorted(self.chunks.glob("chunk-*.parquet")):
            check = self.check_chunk(path)
            if check.problem:
                self.put_aside(path, check.problem)
            else:
                done.update(check.ids)
        return done

    def put_aside(self, path: Path, problem: str) -> Path:
        """Move a chunk that cannot be used into ``.ssogen/set-aside/`` (kept for a look, never deleted)."""
        kind = "damaged" if problem.startswith("is damaged") else "foreign"
        target = self.set_aside / f"{path.stem}.{kind}.parquet"
        number = 1
        while target.exists():
            target = self.set_aside / f"{path.stem}.{kind}-{number}.parquet"
            number += 1
        with writing(target, "setting a chunk aside"):
            self.set_aside.mkdir(parents=True, exist_ok=True)
            path.rename(target)
        with self._index_guard:
            self._next_index = None  # counted again from the files, set-aside ones included
        logger.warning(
            "chunk %s %s: moved to %s (kept, not deleted); its queries will be done again",
            path.relative_to(self.root),
            problem,
            target.relative_to(self.root),
        )
        return target
