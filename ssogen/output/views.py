"""Turn `sso` records into the dataset configs trainers read, each with an explicit schema.

Owns the column layout of every exported config:
    sso            the full record
    dpo            TRL conversational preference: prompt=[user], chosen=[assistant y+], rejected=[assistant y-]
    steer_pos      prompt=[system p+, user], chosen y+, rejected y-        (steering pair 1)
    steer_neg      prompt=[system p-, user], chosen y°, rejected y+        (steering pair 2)
    reward         chosen / rejected as whole conversations (user + assistant), for reward-model trainers
    sso_reference  the paper authors' trainer layout: instruction, system, p_system, n_system, chosen, rejected, raw
    dropped        prompt_id, reason (and the prompt and features)
and the seeded train/test split, which is decided per query so every view splits the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from ssogen.inputs.seeds import derive_seed
from ssogen.output.store import RECORD_SCHEMA

Row = dict[str, Any]

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_CONVERSATION = pa.list_(_MESSAGE)
PREFERENCE_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", _CONVERSATION),
        ("chosen", _CONVERSATION),
        ("rejected", _CONVERSATION),
        ("weight", pa.float64()),
    ]
)
REWARD_SCHEMA = pa.schema(
    [("prompt_id", pa.string()), ("chosen", _CONVERSATION), ("rejected", _CONVERSATION), ("weight", pa.float64())]
)
REFERENCE_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("instruction", pa.string()),
        ("history", pa.list_(pa.list_(pa.string()))),
        ("system", pa.string()),
        ("p_system", pa.string()),
        ("n_system", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("raw", pa.string()),
        ("weight", pa.float64()),
    ]
)


def _turns(row: Row) -> list[Row]:
    return [*map(dict, row["context"] or []), {"role": "user", "content": row["prompt"]}]


def _prompt(row: Row, steering: str | None) -> list[Row]:
    """The conversation an answer was generated under: the steering message (if any) and the query's own
    system turn first, as a system turn, or merged into the first user turn when the model's template had
    no system role (`steering_in_user`), exactly as generation did (`ssogen.inputs.chat.ChatFormat.with_system`)."""
    system = "\n\n".join(part for part in (steering, row.get("system")) if part)
    turns = _turns(row)
    if not system:
        return turns
    if not row.get("steering_in_user"):
        return [{"role": "system", "content": system}, *turns]
    first_user = next(i for i, m in enumerate(turns) if m["role"] == "user")
    turns[first_user] = {"role": "user", "content": f"{system}\n\n{turns[first_user]['content']}"}
    return turns


def _assistant(text: str) -> list[Row]:
    return [{"role": "assistant", "content": text}]


def _pair(row: Row, steering: str | None, chosen: str, rejected: str) -> Row:
    return {
        "prompt_id": row["prompt_id"],
        "prompt": _prompt(row, steering),
        "chosen": _assistant(row[chosen]),
        "rejected": _assistant(row[rejected]),
        "weight": row["weight"],
    }


def dpo_row(row: Row) -> Row:
    return _pair(row, None, "chosen", "rejected")


def steer_pos_row(row: Row) -> Row:
    return _pair(row, row["system_pos"], "chosen", "rejected")


def steer_neg_row(row: Row) -> Row:
    # The original answer, not y-, is preferred under p-: p- must not become a backdoor (SSO.md).
    return _pair(row, row["system_neg"], "original", "chosen")


def reward_row(row: Row) -> Row:
    return {
        "prompt_id": row["prompt_id"],
        "chosen": _prompt(row, None) + _assistant(row["chosen"]),
        "rejected": _prompt(row, None) + _assistant(row["rejected"]),
        "weight": row["weight"],
    }


def _history(context: list[Row]) -> list[list[str]]:
    """Earlier turns as the authors' trainer reads them: [user, assistant] pairs."""
    turns = [m for m in context if m["role"] in ("user", "assistant")]
    return [
        [turns[i]["content"], turns[i + 1]["content"]]
        for i in range(0, len(turns) - 1, 2)
        if turns[i]["role"] == "user" and turns[i + 1]["role"] == "assistant"
    ]


def reference_row(row: Row) -> Row:
    return {
        "prompt_id": row["prompt_id"],
        "instruction": row["prompt"],
        "history": _history(list(row["context"] or [])),
        "system": row.get("system") or "",
        "p_system": row["system_pos"],
        "n_system": row["system_neg"],
        "chosen": row["chosen"],
        "rejected": row["rejected"],
        "raw": row["original"],
        "weight": row["weight"],
    }


# config name -> (row builder, schema); the order is the order of the card and of dataset_info.
VIEWS: dict[str, tuple[Callable[[Row], Row] | None, pa.Schema]] = {
    "sso": (None, RECORD_SCHEMA),
    "dpo": (dpo_row, PREFERENCE_SCHEMA),
    "steer_pos": (steer_pos_row, PREFERENCE_SCHEMA),
    "steer_neg": (steer_neg_row, PREFERENCE_SCHEMA),
    "reward": (reward_row, REWARD_SCHEMA),
    "sso_reference": (reference_row, REFERENCE_SCHEMA),
}


def split_of(prompt_id: str, seed: int, test_size: float) -> str:
    """'test' for a seeded fraction of queries, decided per query (stable across resumes, shards and merges)."""
    # Not tied to the round: the same queries are held out in every round of a run.
    draw = derive_seed(seed, 0, prompt_id, "split") / 0x7FFFFFFF
    return "test" if draw < test_size else "train"


def view_tables(records: pa.Table, rows_per_batch: int = 512) -> Iterator[tuple[str, pa.Table]]:
    """(config, table) of every view of `records` (kept records of one split), one view at a time.

    Rows go through the views' row functions `rows_per_batch` at a time, so memory holds one view of
    `records` and a few hundred rows as Python objects, however large `records` is.
    """
    for name, (make_row, schema) in VIEWS.items():
        if make_row is None:
            yield name, records.cast(schema)
            continue
        batches = records.to_batches(max_chunksize=rows_per_batch)
        tables = [pa.Table.from_pylist([make_row(r) for r in b.to_pylist()], schema=schema) for b in batches]
        yield name, pa.concat_tables(tables) if tables else schema.empty_table()


def llamafactory_dataset_info(files: dict[str, list[str]], name: str = "ssogen_sso") -> dict[str, Any]:
    """The SSO authors' LLaMA-Factory fork's ``dataset_info.json`` entries for the sso_reference config.

    Their loader reads the steering columns (p_system, n_system, raw) only for ``"formatting": "sso"``
    (``parser.py``, ``aligner.py::convert_sso``), and earlier turns from ``history`` as [user, assistant]
    pairs. ``files``: each split's files, relative to the folder; one entry per split (``<name>_<split>``,
    the train split also as ``<name>``). A split written as several files is named by its folder's pattern
    (``data_files``-style glob), which LLaMA-Factory reads as one local dataset.
    """
    columns = {
        "prompt": "instruction",
        "history": "history",
        "system": "system",
        "chosen": "chosen",
        "rejected": "rejected",
        "raw": "raw",
        "p_system": "p_system",
        "n_system": "n_system",
    }
    entries: dict[str, Any] = {}
    for split, paths in files.items():
        for k, path in enumerate(paths):
            key = f"{name}_{split}" if len(paths) == 1 else f"{name}_{split}_{k}"
            entries[key] = {"file_name": path, "formatting": "sso", "ranking": True, "columns": columns}
    if f"{name}_train" in entries:
        entries = {name: entries[f"{name}_train"], **entries}
    return entries
