"""Query loading: formats, column choice, Self-Instruct inputs, conversations, ids, duplicates, bad files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ssogen.errors import UsageError
from ssogen.inputs.sources import load_queries, prompt_id
from tests.conftest import QUERIES


def test_bundled_queries_are_12_distinct_prompts_small_enough_for_a_quick_first_run():
    queries = load_queries(None)
    # Two each of code, maths, advice, writing, explanation and safety: the first run (`make run`) is a demo.
    assert len(queries.queries) == 12
    assert queries.duplicates == 0 and not queries.empty
    assert any("SQL" in q.prompt for q in queries.queries) and any("poem" in q.prompt for q in queries.queries)


def test_self_instruct_rows_append_the_first_instance_input():
    queries = load_queries(str(QUERIES))
    rows = [json.loads(line) for line in QUERIES.read_text().splitlines()]
    assert len(queries.queries) == len(rows) == 48
    for query, row in zip(queries.queries, rows, strict=True):
        given = row["instances"][0]["input"]
        assert query.prompt == (f"{row['instruction']}\n\n{given}" if given else row["instruction"])


def write_frame(frame: pd.DataFrame, path, **parquet_options) -> None:
    """``frame`` written in the format of ``path``'s suffix, as pandas users write query files."""
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records")
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, **parquet_options)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_format_reads_the_same_queries(tmp_path, suffix):
    frame = pd.DataFrame({"question": ["What is 2+2?", "Name a colour."], "input": ["", "Pick one."]})
    path = tmp_path / f"q{suffix}"
    write_frame(frame, path)
    prompts = [q.prompt for q in load_queries(str(path)).queries]
    assert prompts == ["What is 2+2?", "Name a colour.\n\nPick one."]


def test_query_column_picks_the_column_and_names_the_columns_found_when_missing(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "hello", "other": 1}\n')
    assert load_queries(str(path), column="text").queries[0].prompt == "hello"
    with pytest.raises(UsageError, match=r"no query column .* columns found: text, other.*--query-column"):
        load_queries(str(path))


def test_messages_column_keeps_earlier_turns_as_context(tmp_path):
    path = tmp_path / "q.jsonl"
    conversation = [
        {"role": "system", "content": "old system"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    path.write_text(json.dumps({"messages": conversation}) + "\n")
    query = load_queries(str(path)).queries[0]
    assert query.prompt == "Tell me a joke."
    assert query.messages() == conversation[1:]


def test_a_conversation_must_end_with_a_user_turn(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
    with pytest.raises(UsageError, match="must end with a user turn"):
        load_queries(str(path))


def test_prompt_id_is_stable_and_ignores_surrounding_whitespace():
    assert prompt_id("  Hello  ") == prompt_id("Hello")
    assert prompt_id("Hello") != prompt_id("hello")
    assert len(prompt_id("x")) == 16


def test_duplicates_are_removed_and_empty_queries_set_aside(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": " a "}\n{"prompt": ""}\n{"prompt": "b"}\n')
    queries = load_queries(str(path))
    assert [q.prompt for q in queries.queries] == ["a", "b"]
    assert queries.duplicates == 1 and len(queries.empty) == 1


def test_malformed_json_line_is_named(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(UsageError, match=r"line 2: malformed JSON"):
        load_queries(str(path))


def test_missing_file_and_unknown_format_are_named(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_queries(str(tmp_path / "nope.jsonl"))
    odd = tmp_path / "q.xml"
    odd.write_text("<q/>")
    with pytest.raises(UsageError, match=r"unknown format \.xml"):
        load_queries(str(odd))


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(UsageError, match=r"line 2: not valid UTF-8"):
        load_queries(str(path))


def test_limit_cuts_the_query_list():
    assert len(load_queries(str(QUERIES), limit=5).queries) == 5
