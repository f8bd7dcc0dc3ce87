"""Load user queries from files, dataset folders or the Hub, and normalise them into `Query` objects.

Owns: reading JSONL / JSON / CSV / Parquet files and datasets (Hub or local folder) as typed data, one
bounded batch at a time; telling a local path from a Hub id; choosing the query column; turning a row into
a conversation that ends with a user turn; the normal form in which duplicates are matched, and the stable
`prompt_id` derived from it; deduplication and ``--limit``. Every problem with the input is a `UsageError`
that names the file, the line or row, or the column, and says what to do.

Reading
    Values keep their types: a null is an empty query (never "nan"), an integer stays "1" (an integral
    float too), a list is a conversation, and message ``content`` given as a list of text parts is joined
    with line breaks (a part that is not text is refused). JSONL, CSV (pyarrow, every column as text),
    Parquet (pyarrow, batch by batch) and JSON lists of objects are streamed, as are datasets (``datasets``
    in streaming mode: ``--limit`` reads only what it needs from the Hub). A ``.json`` file may also hold
    JSON Lines, or one of pandas' ``to_json`` layouts: records (streamed), or columns / index / split /
    table, which are read whole since no row is complete before the end of the file.

Paths and Hub ids
    ``--queries`` names a local file or folder when it exists, or when it cannot be a Hub id: it starts
    with "/", "." or "~", holds a backslash or more than one "/", or ends with a query-file extension
    (.jsonl, .ndjson, .json, .csv, .parquet); such a path that does not exist is "no such file". Anything
    else of the form ORG/NAME is a Hub dataset id; a bare NAME is a path. A local folder is read as a
    dataset folder (the Hub's layout) by ``datasets``. ``--query-split`` / ``--query-config`` choose the
    split and config of a dataset.

Duplicates
    Two queries are the same when their normal forms are: Unicode NFC (two encodings of the same
    characters match, such as "é" as one code point or as "e" plus a combining accent; compatibility forms
    do not, since NFKC would merge "x²" with "x2" or "ﬁ" with "fi"), every run of whitespace inside a line
    folded to one space and each line stripped, runs of blank lines folded to one, the whole stripped.
    Case is kept ("US" and "us", or two code identifiers, are different queries). A conversation matches
    another only if every turn does, its system turn included. The first of a set of duplicates is kept,
    as written; the others are counted. A text already in normal form keeps the id it had before these
    rules (the hash of the stripped text).
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import logging
import math
import re
import unicodedata
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
DEFAULT_SPLIT = "train"
BATCH_ROWS = 1024  # rows decoded at once from Parquet / CSV: memory holds one batch, not the file
_READ_BYTES = 1 << 20  # bytes read at once from a text file
_NON_SPACE = re.compile(r"\S")

Rows = Iterator[tuple[str, dict[str, Any]]]  # (where it is: "line 3" in a text file, "row 3" in a table; row)


@dataclass(frozen=True)
class Query:
    """One user query: the last user turn plus any earlier turns kept as context.

    ``system`` is the conversation's own system turn, if it had one: part of the id (two conversations
    that differ only there are not duplicates), kept out of `messages`, whose system role is the steering
    message's.
    """

    prompt_id: str
    prompt: str
    context: tuple[dict[str, str], ...] = field(default=())
    system: str = ""

    def messages(self) -> list[dict[str, str]]:
        return [*map(dict, self.context), {"role": "user", "content": self.prompt}]


@dataclass
class QuerySet:
    """The queries of a run, after deduplication; empty ones are kept aside to be reported as dropped."""

    queries: list[Query]
    empty: list[Query]
    duplicates: int
    source: str


def normal_form(text: str) -> str:
    """The form in which duplicates are matched (see the module's docstring): NFC, whitespace folded."""
    lines: list[str] = []
    for line in unicodedata.normalize("NFC", text).splitlines():
        folded = " ".join(line.split())
        if folded or (lines and lines[-1]):  # at most one blank line in a row
            lines.append(folded)
    return "\n".join(lines).strip()


def prompt_id(prompt: str, context: Iterable[dict[str, str]] = (), system: str = "") -> str:
    """Stable id of a query: the same normal form (and the same earlier turns) gives the same id."""
    head = [["system", normal_form(system)]] if normal_form(system) else []
    turns = head + [[m["role"], normal_form(m["content"])] for m in context] + [["user", normal_form(prompt)]]
    digest = hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode("utf-8")).hexdigest()
    return digest[:16]


@dataclass
class QueryStats:
    """Counted while queries stream by."""

    rows: int = 0  # distinct queries yielded, empty ones included
    duplicates: int = 0
    nonempty: int = 0  # distinct non-empty queries yielded: what --limit counts


def iter_queries(
    source: str | None,
    column: str | None = None,
    limit: int | None = None,
    stats: QueryStats | None = None,
    *,
    split: str | None = None,
    dataset_config: str | None = None,
) -> Iterator[Query]:
    """Stream normalised, deduplicated queries (empty ones included, for the caller to report as dropped).

    ``limit`` counts distinct non-empty queries: the stream ends with the limit-th one. Memory holds the ids
    seen and one batch of rows. ``split`` / ``dataset_config`` apply to a dataset (Hub id or folder).
    """
    label = source or BUNDLED
    stats = stats if stats is not None else QueryStats()
    seen: set[str] = set()
    chosen_column: str | None = None
    for where, row in _read_rows(source, column, split, dataset_config):
        if chosen_column is None:
            chosen_column = _pick_column(row, column, label)
        query = _row_to_query(row, chosen_column, f"--queries: {label}, {where}")
        if query.prompt_id in seen:
            stats.duplicates += 1
            continue
        seen.add(query.prompt_id)
        stats.rows += 1
        stats.nonempty += bool(query.prompt)
        yield query
        if limit is not None and stats.nonempty >= limit:
            return
    if stats.rows == 0:
        raise UsageError(f"--queries: {label} holds no rows; give a file with at least one query.")


def load_queries(
    source: str | None,
    column: str | None = None,
    limit: int | None = None,
    *,
    split: str | None = None,
    dataset_config: str | None = None,
) -> QuerySet:
    """Read, normalise, deduplicate and (optionally) cut the queries of a run."""
    stats = QueryStats()
    queries: list[Query] = []
    empty: list[Query] = []
    for query in iter_queries(source, column, limit, stats, split=split, dataset_config=dataset_config):
        (queries if query.prompt else empty).append(query)
    if stats.duplicates:
        logger.info("%d duplicate queries in %s were removed (same prompt_id)", stats.duplicates, source or BUNDLED)
    return QuerySet(queries=queries, empty=empty, duplicates=stats.duplicates, source=source or BUNDLED)


def query_source_options(config: Any) -> dict[str, str | None]:
    """The dataset options of a `BuildConfig` (--query-split, --query-config) as `iter_queries` keywords."""
    return {"split": config.query_split, "dataset_config": config.query_config}


# --- where the rows come from ---------------------------------------------------------------------------------


def _read_rows(source: str | None, column: str | None, split: str | None, dataset_config: str | None) -> Rows:
    if source is None:
        _refuse_dataset_options(BUNDLED, split, dataset_config)
        text = resources.files("ssogen").joinpath("data/default_queries.jsonl").read_text(encoding="utf-8")
        return _jsonl_rows(text.splitlines(), BUNDLED)
    path = Path(source).expanduser()
    if path.is_file():
        _refuse_dataset_options(source, split, dataset_config)
        return _file_rows(path, column)
    if path.is_dir():
        return _dataset_rows(str(path), split, dataset_config, hub=False)
    if is_local_path(source):
        raise UsageError(f"--queries: no such file: {source} does not exist {_near_misses(path)} {_WHAT_QUERIES_TAKES}")
    return _dataset_rows(source, split, dataset_config, hub=True)


_WHAT_QUERIES_TAKES = "Give a JSONL, JSON, CSV or Parquet file, a dataset folder, or a Hub dataset id ORG/NAME."


def is_local_path(source: str) -> bool:
    """Whether ``source`` can only be a local path (see "Paths and Hub ids" in the module's docstring)."""
    return (
        source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") != 1
        or Path(source).suffix.lower() in FILE_FORMATS
    )


def _near_misses(path: Path) -> str:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        names = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.7)
    where = f"(looked in {parent.resolve()})." if parent.is_dir() else f"(nor does {parent})."
    return where + (f" Did you mean {' or '.join(str(parent / c) for c in close)}?" if close else "")


def _refuse_dataset_options(label: str, split: str | None, dataset_config: str | None) -> None:
    for name, value in (("query-split", split), ("query-config", dataset_config)):
        if value is not None:
            raise UsageError(
                f"--{name}: {value!r} applies to a dataset (a Hub id or a dataset folder), not to {label}; "
                f"leave it out."
            )


def _file_rows(path: Path, column: str | None) -> Rows:
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"--queries: {path} has an unknown format {path.suffix or '(no extension)'}; "
            f"use one of {', '.join(sorted(FILE_FORMATS))}."
        )
    readers = {"jsonl": _jsonl_file_rows, "json": _json_file_rows, "csv": _csv_rows, "parquet": _parquet_rows}
    return readers[fmt](path, column)


def _jsonl_file_rows(path: Path, column: str | None = None) -> Rows:
    """Line by line, so a large file is never held in memory whole."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw[3:] if number == 1 and raw.startswith(codecs.BOM_UTF8) else raw, path, number)
            yield from _jsonl_rows([line], str(path), first_number=number)


def _jsonl_rows(lines: list[str], label: str, first_number: int = 1) -> Rows:
    for number, line in enumerate(lines, start=first_number):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--queries: {label}, line {number}: malformed JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise UsageError(f"--queries: {label}, line {number}: expected a JSON object per line.")
        yield f"line {number}", row


def _decode(raw: bytes, path: Path, first_line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw[: exc.start].count(b"\n")
        raise UsageError(
            f"--queries: {path}, line {line}: not valid UTF-8 (byte {raw[exc.start]:#04x}); "
            f"re-encode the file as UTF-8."
        ) from None


def _text_pieces(path: Path) -> Iterator[str]:
    """The file's text in pieces that end at line breaks (UTF-8 never has a 0x0A inside a character)."""
    line, tail = 1, b""
    with path.open("rb") as handle:
        while True:
            block = handle.read(_READ_BYTES)
            data = tail + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if block and cut == 0:  # no line break yet: a long line, read on
                tail = data
                continue
            piece, tail = data[:cut], data[cut:]
            if line == 1 and piece.startswith(codecs.BOM_UTF8):
                piece = piece[3:]
            if piece:
                yield _decode(piece, path, line)
                line += piece.count(b"\n")
            if not block:
                return


# --- JSON ---------------------------------------------------------------------------------------------------


class _JsonText:
    """JSON values read one at a time from text that arrives in pieces, with the line each one starts on."""

    def __init__(self, pieces: Iterator[str], label: str) -> None:
        self.pieces, self.label = pieces, label
        self.buf, self.pos, self.line, self.done = "", 0, 1, False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        piece = next(self.pieces, None)
        if piece is None:
            self.done = True
            return False
        self.buf, self.pos = self.buf[self.pos :] + piece, 0
        return True

    def _advance(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def peek(self) -> str | None:
        """The next character that is not whitespace, or None at the end of the text."""
        while True:
            found = _NON_SPACE.search(self.buf, self.pos)
            if found:
                self._advance(found.start())
                return self.buf[self.pos]
            self._advance(len(self.buf))
            if not self._more():
                return None

    def take(self) -> None:
        self._advance(self.pos + 1)

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._more():  # the value may just continue in the next piece
                    continue
                at = self.line + self.buf.count("\n", self.pos, exc.pos)
                detail = exc.msg if at == self.line else f"{exc.msg}, at line {at}"
                raise self.fail(f"malformed JSON ({detail})") from None
            if end == len(self.buf) and self._more():  # a number cut at the end of a piece: "12" + "3"
                continue
            self._advance(end)
            return value

    def fail(self, what: str) -> UsageError:
        return UsageError(f"--queries: {self.label}, line {self.line}: {what}.")


def _json_file_rows(path: Path, column: str | None) -> Rows:
    """A JSON list of objects (streamed), JSON Lines (streamed), or one of pandas' dict layouts (read whole)."""
    text = _JsonText(_text_pieces(path), str(path))
    first = text.peek()
    if first == "[":
        text.take()
        yield from _json_list_rows(text)
    elif first == "{":
        line = text.line
        document = text.value()
        if text.peek() is None:
            yield from _layout_rows(document, str(path), column)
            return
        yield f"line {line}", document  # more after the first object: JSON Lines in a .json file
        while text.peek() is not None:
            line, row = text.line, text.value()
            if not isinstance(row, dict):
                raise UsageError(f"--queries: {path}, line {line}: expected a JSON object per line.")
            yield f"line {line}", row
    else:
        raise text.fail("expected a JSON list of objects, an object, or one object per line")


def _json_list_rows(text: _JsonText) -> Rows:
    number = 0
    while text.peek() != "]":
        if number and text.peek() != ",":
            raise text.fail("malformed JSON (expected ',' or ']')")
        if number:
            text.take()
        number += 1
        line, row = text.line, text.value()
        if not isinstance(row, dict):
            raise UsageError(
                f"--queries: {text.label}, line {line}: row {number} is not an object; a list of lists has no "
                f"column names (with pandas, write it with to_json(orient='records'))."
            )
        yield f"row {number}", row
    text.take()
    if text.peek() is not None:
        raise text.fail("extra data after the JSON list")


def _layout_rows(data: dict[str, Any], label: str, column: str | None) -> Rows:
    """Rows of one JSON object in one of pandas' to_json layouts (split, table, columns, index) or one row."""
    known = {column, *QUERY_COLUMNS} - {None}
    values = list(data.values())
    if isinstance(data.get("columns"), list) and isinstance(data.get("data"), list):  # orient="split"
        rows = [dict(zip(data["columns"], r, strict=False)) for r in data["data"] if isinstance(r, list)]
    elif isinstance(data.get("schema"), dict) and isinstance(data.get("data"), list):  # orient="table"
        rows = data["data"]
    elif values and all(isinstance(v, dict) for v in values):  # orient="columns" or "index"
        inner = {key for v in values for key in v}
        if known & set(data) or not (known & inner or all(str(k).isdigit() for k in data)):  # columns
            labels = list(dict.fromkeys(key for v in values for key in v))
            rows = [{name: data[name].get(key) for name in data} for key in labels]
        else:  # index: one entry per row
            rows = values
    elif len(values) == 1 and isinstance(values[0], list) and not known & set(data):  # {"data": [rows]}
        rows = values[0]
    else:  # a single row
        rows = [data]
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UsageError(f"--queries: {label}, row {number}: expected an object (a row), got {_kind(row)}.")
        yield f"row {number}", row


# --- CSV and Parquet (pyarrow) --------------------------------------------------------------------------------


def _csv_rows(path: Path, column: str | None) -> Rows:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        names = pacsv.open_csv(path).schema.names  # reads the first block only
        wanted = _columns_to_read(names, column, str(path))
        # Every column as text, empty cells as "": a CSV value is text, never a guessed number or null.
        options = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in names}, include_columns=wanted, strings_can_be_null=False
        )
        reader = pacsv.open_csv(path, convert_options=options, read_options=pacsv.ReadOptions(use_threads=False))
        line = 1  # the header (a quoted value may span lines: then this is the row number plus one)
        for batch in reader:
            for row in batch.to_pylist():
                line += 1
                yield f"line {line}", row
    except (pa.ArrowInvalid, OSError) as exc:
        if "UTF8" in str(exc):
            _first_bad_utf8(path)
        raise UsageError(f"--queries: {path} could not be read as CSV: {exc}") from None


def _first_bad_utf8(path: Path) -> None:
    for _ in _text_pieces(path):  # raises a UsageError naming the line
        pass


def _parquet_rows(path: Path, column: str | None) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        wanted = _columns_to_read(parquet.schema_arrow.names, column, str(path))
        number = 0
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            for row in batch.to_pylist():
                number += 1
                yield f"row {number}", row
    except (pa.ArrowException, OSError) as exc:
        raise UsageError(f"--queries: {path} could not be read as Parquet: {exc}") from None


def _columns_to_read(names: list[str], column: str | None, label: str) -> list[str]:
    """The query column and the columns read beside it (only those: a wide file costs nothing extra)."""
    chosen = _pick_column(dict.fromkeys(names), column, label)
    return [name for name in names if name in {chosen, "input", "instances"}]


# --- datasets (Hub ids and dataset folders) -------------------------------------------------------------------


def _dataset_rows(source: str, split: str | None, dataset_config: str | None, *, hub: bool) -> Rows:
    """Rows of a dataset read by `datasets` in streaming mode: only what is consumed is downloaded."""
    import datasets

    try:
        dataset = datasets.load_dataset(source, name=dataset_config, split=split or DEFAULT_SPLIT, streaming=True)
        rows = iter(dataset)
        number = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            number += 1
            yield f"row {number}", row
    except Exception as exc:
        raise _dataset_error(source, exc, split, dataset_config, hub) from None


def _dataset_error(source: str, exc: Exception, split: str | None, config: str | None, hub: bool) -> UsageError:
    text = " ".join(str(exc).split())[:400]
    kind = type(exc).__name__
    what = f"the Hub dataset {source}" if hub else f"the dataset folder {source}"
    if "split" in text.lower() and ("bad split" in text.lower() or "unknown split" in text.lower()):
        return UsageError(f"--query-split: {what} has no split {split or DEFAULT_SPLIT!r} ({text}).")
    if "BuilderConfig" in text or "config name is missing" in text.lower():
        return UsageError(f"--query-config: {what} has no config {config!r} ({text}); pick one with --query-config.")
    if not hub:
        return UsageError(f"--queries: could not read {what} ({kind}: {text}).")
    if kind in {"DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError"}:
        return UsageError(
            f"--queries: {source} is not a local file or folder (no such path here), and the Hub has no dataset "
            f"{source} that this token can read. Check the path, or the id and HF_TOKEN. {_WHAT_QUERIES_TAKES}"
        )
    return UsageError(
        f"--queries: {source} is not a local file or folder (no such path here), so it was read as a Hub dataset "
        f"id, and loading it failed ({kind}: {text}). If you meant a local path, check it; if a Hub dataset, "
        f"check the id, your network and HF_TOKEN."
    )


# --- rows to queries ------------------------------------------------------------------------------------------


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


def _row_to_query(row: dict[str, Any], column: str, where: str) -> Query:
    value = row.get(column)
    if column == "messages" or isinstance(value, list | tuple):
        return _conversation_to_query(value, where)
    text = _text(value, f"{where}, column {column!r}")
    # The Self-Instruct layout: a non-empty `input` is appended after a blank line (unless it is the query).
    extra = row.get("input") if column != "input" else None
    if extra is None and column != "input" and isinstance(row.get("instances"), list) and row["instances"]:
        first = row["instances"][0]  # Self-Instruct rows keep their input in the first instance
        extra = first.get("input") if isinstance(first, dict) else None
    extra_text = _text(extra, f"{where}, column 'input'").strip()
    if extra_text:
        text = f"{text}\n\n{extra_text}"
    text = text.strip()
    return Query(prompt_id=prompt_id(text), prompt=text)


def _text(value: Any, where: str) -> str:
    """A scalar cell as text: null (and a float NaN) is empty, an integral number has no ".0"."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{where}: binary data that is not UTF-8 text.") from None
    if isinstance(value, dict | list | tuple):
        raise UsageError(f"{where}: holds {_kind(value)}, not text; name a text column with --query-column.")
    return str(value)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {', '.join(map(str, list(value)[:5]))}"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _conversation_to_query(value: Any, where: str) -> Query:
    turns = list(value) if value is not None else []
    if not turns or not all(isinstance(t, dict) and "role" in t and "content" in t for t in turns):
        raise UsageError(f"{where}: messages must be a list of {{role, content}} objects.")
    contents = [_content(t["content"], f"{where}, turn {k}") for k, t in enumerate(turns, start=1)]
    roles = [str(t["role"]) for t in turns]
    if roles[-1] != "user":
        raise UsageError(f"{where}: the conversation must end with a user turn (it ends with {roles[-1]!r}).")
    # The input's system turn is the query's own (part of its id), kept apart from the context: the system
    # role of the prompts ssogen renders is the steering message's.
    system = "\n\n".join(c for r, c in zip(roles, contents, strict=True) if r == "system" and c.strip())
    context = tuple({"role": r, "content": c} for r, c in zip(roles[:-1], contents[:-1], strict=True) if r != "system")
    text = contents[-1].strip()
    return Query(prompt_id=prompt_id(text, context, system), prompt=text, context=context, system=system)


def _content(content: Any, where: str) -> str:
    """A message's content as text: a list of text parts is joined with line breaks; None is empty."""
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list | tuple):
        return _text(content, where)
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text" and "text" in part:
            texts.append(_text(part["text"], where))
        else:
            kind = part.get("type") if isinstance(part, dict) else _kind(part)
            raise UsageError(
                f"{where}: a content part of type {kind!r} is not text; ssogen generates from text only. "
                f"Remove such parts from the conversation, or pick another column with --query-column."
            )
    return "\n".join(texts)
