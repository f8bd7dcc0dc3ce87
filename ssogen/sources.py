"""Load user queries from files or the Hub and normalise them into `Query` objects.

Owns: reading JSONL / JSON / CSV / Parquet files, Hub dataset ids and the bundled default queries;
choosing the query column; turning a row into a conversation that ends with a user turn; the stable
`prompt_id`; deduplication. Every problem with the input is a `UsageError` that names the file, the
line or the column and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ssogen.errors import UsageError

logger = logging.getLogger(__name__)

QUERY_COLUMNS = ("prompt", "instruction", "question", "query", "messages")
FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
BUNDLED = "bundled"


@dataclass(frozen=True)
class Query:
    """One user query: the last user turn plus any earlier turns kept as context."""

    prompt_id: str
    prompt: str
    context: tuple[dict[str, str], ...] = field(default=())

    def messages(self) -> list[dict[str, str]]:
        return [*map(dict, self.context), {"role": "user", "content": self.prompt}]


@dataclass
class QuerySet:
    """The queries of a run, after deduplication; empty ones are kept aside to be reported as dropped."""

    queries: list[Query]
    empty: list[Query]
    duplicates: int
    source: str


def prompt_id(prompt: str, context: Iterable[dict[str, str]] = ()) -> str:
    """Stable id of a normalised query: the same text (modulo surrounding whitespace) gives the same id."""
    turns = [[m["role"], m["content"].strip()] for m in context] + [["user", prompt.strip()]]
    digest = hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode("utf-8")).hexdigest()
    return digest[:16]


@dataclass
class QueryStats:
    """Counted while queries stream by."""

    rows: int = 0
    duplicates: int = 0


def iter_queries(
    source: str | None, column: str | None = None, limit: int | None = None, stats: QueryStats | None = None
) -> Iterator[Query]:
    """Stream normalised, deduplicated queries (empty ones included); memory holds only the ids seen."""
    label = source or BUNDLED
    stats = stats if stats is not None else QueryStats()
    seen: set[str] = set()
    chosen_column: str | None = None
    for number, row in _read_rows(source):
        if chosen_column is None:
            chosen_column = _pick_column(row, column, label)
        query = _row_to_query(row, chosen_column, label, number)
        if query.prompt_id in seen:
            stats.duplicates += 1
            continue
        seen.add(query.prompt_id)
        stats.rows += 1
        yield query
        if limit is not None and stats.rows >= limit:
            return
    if stats.rows == 0:
        raise UsageError(f"--queries: {label} holds no rows; give a file with at least one query.")


def load_queries(source: str | None, column: str | None = None, limit: int | None = None) -> QuerySet:
    """Read, normalise, deduplicate and (optionally) cut the queries of a run."""
    stats = QueryStats()
    queries: list[Query] = []
    empty: list[Query] = []
    for query in iter_queries(source, column, limit, stats):
        (queries if query.prompt else empty).append(query)
    if stats.duplicates:
        logger.info("%d duplicate queries in %s were removed (same prompt_id)", stats.duplicates, source or BUNDLED)
    return QuerySet(queries=queries, empty=empty, duplicates=stats.duplicates, source=source or BUNDLED)


def _read_rows(source: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based row or line number, row) pairs."""
    if source is None:
        text = resources.files("ssogen").joinpath("data/default_queries.jsonl").read_text(encoding="utf-8")
        return _jsonl_rows(text.splitlines(), BUNDLED)
    path = Path(source)
    if path.exists():
        return _file_rows(path)
    if _looks_like_hub_id(source):
        return _hub_rows(source)
    raise UsageError(
        f"--queries: {source} does not exist. Give a JSONL, JSON, CSV or Parquet file, or a Hub dataset id."
    )


def _file_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.is_dir():
        raise UsageError(f"--queries: {path} is a folder; give a file (JSONL, JSON, CSV or Parquet).")
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"--queries: {path} has an unknown format {path.suffix or '(no extension)'}; "
            f"use one of {', '.join(sorted(FILE_FORMATS))}."
        )
    if fmt == "jsonl":
        return _jsonl_file_rows(path)
    if fmt in {"json", "csv"}:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise UsageError(
                f"--queries: {path}, line {line}: not valid UTF-8 (byte {raw[exc.start]:#04x}); "
                f"re-encode the file as UTF-8."
            ) from None
    if fmt == "json":
        return _json_rows(text, path)
    import pandas as pd

    try:
        if fmt == "csv":
            import io

            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        else:
            frame = pd.read_parquet(path)
    except Exception as exc:
        raise UsageError(f"--queries: {path} could not be read as {fmt}: {exc}") from None
    return ((i + 2 if fmt == "csv" else i + 1, row) for i, row in enumerate(frame.to_dict("records")))


def _jsonl_file_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Line by line, so a large file is never held in memory whole."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(
                    f"--queries: {path}, line {number}: not valid UTF-8 (byte {raw[exc.start]:#04x}); "
                    f"re-encode the file as UTF-8."
                ) from None
            yield from _jsonl_rows([line], str(path), first_number=number)


def _jsonl_rows(lines: list[str], label: str, first_number: int = 1) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, start=first_number):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--queries: {label}, line {number}: malformed JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise UsageError(f"--queries: {label}, line {number}: expected a JSON object per line.")
        yield number, row


def _json_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--queries: {path}, line {exc.lineno}: malformed JSON ({exc.msg}).") from None
    if isinstance(data, dict):  # {"data": [...]} or a column-oriented mapping
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]) else [data]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UsageError(f"--queries: {path} must hold a JSON list of objects.")
    return ((i + 1, row) for i, row in enumerate(data))


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def _hub_rows(repo_id: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        dataset = datasets.load_dataset(repo_id, split="train")
    except Exception as exc:
        raise UsageError(
            f"--queries: could not load the Hub dataset {repo_id} ({type(exc).__name__}); "
            f"check the id, your network and HF_TOKEN, or give a local file."
        ) from None
    return ((i + 1, row) for i, row in enumerate(dataset))


def _pick_column(row: dict[str, Any], column: str | None, label: str) -> str:
    if column is not None:
        if column not in row:
            raise UsageError(
                f"--query-column: {label} has no column {column!r}; columns found: {', '.join(map(str, row))}."
            )
        return column
    for candidate in QUERY_COLUMNS:
        if candidate in row:
            return candidate
    raise UsageError(
        f"--queries: {label} has no query column (looked for {', '.join(QUERY_COLUMNS)}); "
        f"columns found: {', '.join(map(str, row)) or 'none'}. Name yours with --query-column."
    )


def _row_to_query(row: dict[str, Any], column: str, label: str, number: int) -> Query:
    value = row.get(column)
    if column == "messages" or isinstance(value, list):
        return _conversation_to_query(value, label, number)
    text = "" if value is None else str(value)
    extra = row.get("input")
    if isinstance(extra, str) and extra.strip():
        text = f"{text}\n\n{extra}"
    elif extra is None and isinstance(row.get("instances"), list) and row["instances"]:
        # Self-Instruct rows keep their input in the first instance.
        first = row["instances"][0]
        if isinstance(first, dict) and str(first.get("input") or "").strip():
            text = f"{text}\n\n{first['input']}"
    text = text.strip()
    return Query(prompt_id=prompt_id(text), prompt=text)


def _conversation_to_query(value: Any, label: str, number: int) -> Query:
    turns = list(value) if value is not None else []
    if not turns or not all(isinstance(t, dict) and "role" in t and "content" in t for t in turns):
        raise UsageError(f"--queries: {label}, row {number}: messages must be a list of {{role, content}} objects.")
    if turns[-1]["role"] != "user":
        raise UsageError(
            f"--queries: {label}, row {number}: the conversation must end with a user turn "
            f"(it ends with {turns[-1]['role']!r})."
        )
    # A system turn in the input would fight the steering system message, which always goes first.
    context = tuple({"role": str(t["role"]), "content": str(t["content"])} for t in turns[:-1] if t["role"] != "system")
    text = str(turns[-1]["content"]).strip()
    return Query(prompt_id=prompt_id(text, context), prompt=text, context=context)
