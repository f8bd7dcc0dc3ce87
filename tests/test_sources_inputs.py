"""Query inputs read as typed data (issue 15, points 10-14).

Parquet nulls, integers, list columns and content parts; `input` as the query column; every pandas
`to_json` layout and JSON Lines in a .json file; a mistyped path against a Hub id; dataset splits and
configs, a Hub dataset streamed from the loopback server; every format streamed in bounded memory;
`--limit` and how duplicates are matched.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi

from ssogen.errors import UsageError
from ssogen.inputs.sources import load_queries, prompt_id
from tests.conftest import REPO as SOURCE_TREE
from tests.hubtest import TOKEN, Hub
from tests.test_sources import write_frame


def prompts(path: Path, **options: object) -> list[str]:
    return [q.prompt for q in load_queries(str(path), **options).queries]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- 10. typed data -------------------------------------------------------------------------------------------


def test_parquet_nulls_are_empty_queries_and_integers_stay_integers(tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    pq.write_table(
        pa.table({"prompt": ["Name a colour.", None, "What is 2+2?"], "n": pa.array([1, None, 3], pa.int64())}), path
    )
    queries = load_queries(str(path))
    assert [q.prompt for q in queries.queries] == ["Name a colour.", "What is 2+2?"]
    assert [q.prompt for q in queries.empty] == [""]
    assert prompts(path, column="n") == ["1", "3"]

    by_pandas = tmp_path / "pandas.parquet"  # pandas turns an integer column with a gap into float64
    pd.DataFrame({"question": [1, None, 3]}).to_parquet(by_pandas)
    assert pq.read_schema(by_pandas).field("question").type == pa.float64()
    assert prompts(by_pandas) == ["1", "3"]


def test_a_parquet_list_column_is_a_conversation(tmp_path: Path) -> None:
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke."},
    ]
    path = tmp_path / "q.parquet"
    pq.write_table(pa.table({"dialog": [conversation], "id": [7]}), path)

    query = load_queries(str(path), column="dialog").queries[0]

    assert query.prompt == "Tell me a joke." and query.messages() == conversation


def test_content_given_as_text_parts_is_joined_none_is_empty_and_other_parts_are_refused(tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "Describe a cat."}, {"type": "text", "text": "Be brief."}]
    row = {
        "messages": [
            {"role": "user", "content": parts},
            {"role": "assistant", "content": None},
            {"role": "user", "content": [{"type": "text", "text": "Now in French."}]},
        ]
    }
    path = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)

    query = load_queries(str(path)).queries[0]

    assert query.prompt == "Now in French."
    assert query.context == (
        {"role": "user", "content": "Describe a cat.\nBe brief."},
        {"role": "assistant", "content": ""},
    )
    image = {"type": "image_url", "image_url": {"url": "x.png"}}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": [image]}]}])
    with pytest.raises(UsageError, match=r"line 1, turn 1: a content part of type 'image_url' is not text"):
        load_queries(str(bad))
    last_none = write_jsonl(tmp_path / "none.jsonl", [{"messages": [{"role": "user", "content": None}]}])
    assert [q.prompt for q in load_queries(str(last_none)).empty] == [""]


# --- 11. `input` as the query column --------------------------------------------------------------------------


def test_query_column_input_is_not_doubled(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"input": "Translate 'chat' into English.", "output": "cat"}])
    assert prompts(path, column="input") == ["Translate 'chat' into English."]


# --- 12. .json layouts ----------------------------------------------------------------------------------------

FRAME = pd.DataFrame({"question": ["What is 2+2?", "Name a colour."], "input": ["", "Pick one."]})
EXPECTED = ["What is 2+2?", "Name a colour.\n\nPick one."]


@pytest.mark.parametrize("orient", ["records", "columns", "index", "split", "table"])
def test_json_written_by_pandas_in_each_layout_reads_the_same_queries(tmp_path: Path, orient: str) -> None:
    path = tmp_path / "q.json"
    FRAME.to_json(path, orient=orient)
    assert prompts(path) == EXPECTED


def test_json_lines_in_a_json_file_are_read_and_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    FRAME.to_json(path, orient="records", lines=True)
    assert prompts(path) == EXPECTED
    path.write_text(path.read_text() + '{"question": \n')
    with pytest.raises(UsageError, match=r"q\.json, line 3: malformed JSON"):
        load_queries(str(path))


def test_a_json_list_of_lists_is_refused_naming_the_layout_to_use(tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    FRAME.to_json(path, orient="values")
    with pytest.raises(UsageError, match=r"row 1 is not an object.*to_json\(orient='records'\)"):
        load_queries(str(path))


# --- 13. paths, Hub ids, datasets, streaming ------------------------------------------------------------------


def test_a_mistyped_relative_path_says_no_such_file_and_never_asks_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    def no_hub(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"asked the Hub for {args}")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "queries.jsonl", [{"prompt": "hi"}])

    with pytest.raises(UsageError) as typo:
        load_queries("data/querys.jsonl")
    assert "no such file: data/querys.jsonl does not exist" in str(typo.value)
    assert "Did you mean data/queries.jsonl?" in str(typo.value)
    for path in ("queries", "./data/q", "../data/q", "a/b/c", "~/no-such-queries.csv", "org/set.parquet"):
        with pytest.raises(UsageError, match=f"no such file: {path}"):
            load_queries(path)


def _dataset_folder(root: Path) -> Path:
    files = {
        "easy/train.jsonl": ["What is 1+1?", "Name a fruit."],
        "easy/test.jsonl": ["What is 2+2?"],
        "hard/train.jsonl": ["Prove Fermat's last theorem."],
    }
    for rel, texts in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(root / rel, [{"prompt": t} for t in texts])
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: easy\n  default: true\n  data_files:\n"
        "  - {split: train, path: easy/train.jsonl}\n  - {split: test, path: easy/test.jsonl}\n"
        "- config_name: hard\n  data_files:\n  - {split: train, path: hard/train.jsonl}\n---\n"
    )
    return root


def test_query_split_and_config_choose_what_a_dataset_folder_gives(tmp_path: Path) -> None:
    folder = _dataset_folder(tmp_path / "set")
    assert prompts(folder) == ["What is 1+1?", "Name a fruit."]
    assert prompts(folder, split="test") == ["What is 2+2?"]
    assert prompts(folder, dataset_config="hard") == ["Prove Fermat's last theorem."]
    with pytest.raises(UsageError, match=r"--query-split: the dataset folder .* has no split 'validation'"):
        load_queries(str(folder), split="validation")
    with pytest.raises(UsageError, match=r"--query-config: the dataset folder .* has no config 'medium'"):
        load_queries(str(folder), dataset_config="medium")
    plain = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "hi"}])
    with pytest.raises(UsageError, match=r"--query-split: 'test' applies to a dataset .* not to .*q\.jsonl"):
        load_queries(str(plain), split="test")


@pytest.mark.slow
def test_a_hub_dataset_streams_only_what_limit_needs_from_the_chosen_split(hub: Hub, tmp_path: Path) -> None:
    repo = "ssogen-test/queries"
    local = tmp_path / "upload" / "data"
    local.mkdir(parents=True)
    for name, first in (("train-00000-of-00002", 0), ("train-00001-of-00002", 100), ("test-00000-of-00001", 200)):
        pq.write_table(pa.table({"prompt": [f"question {first + i}" for i in range(100)]}), local / f"{name}.parquet")
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo(repo, repo_type="dataset")
    api.upload_folder(folder_path=local.parent, repo_id=repo, repo_type="dataset")
    code = """
import json, sys
from ssogen.errors import UsageError
from ssogen.inputs.sources import load_queries
out = {}
for case, source, options in [
    ("limit", sys.argv[1], {"limit": 3}),
    ("test", sys.argv[1], {"split": "test", "limit": 2}),
    ("missing", "ssogen-test/no-such-set", {}),
]:
    try:
        out[case] = [q.prompt for q in load_queries(source, **options).queries]
    except UsageError as exc:
        out[case] = str(exc)
print(json.dumps(out))
"""
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code, repo], capture_output=True, text=True, timeout=300, cwd=SOURCE_TREE,
        env={**__import__("os").environ, **env},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])

    assert out["limit"] == ["question 0", "question 1", "question 2"]
    assert out["test"] == ["question 200", "question 201"]
    assert "is not a local file or folder (no such path here), and the Hub has no dataset" in out["missing"]
    # Streaming reads a file in parts (206) or whole (200).
    fetched = [r for r in hub.requests() if "/resolve/" in r and r.endswith((".parquet 200", ".parquet 206"))]
    assert any("train-00000-of-00002" in r for r in fetched)
    assert not any("train-00001-of-00002" in r for r in fetched)  # --limit 3 never needed the second file


MEMORY_PROBE = """
import resource, sys
import pyarrow.csv, pyarrow.parquet
from ssogen.inputs.sources import iter_queries
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = sum(1 for _ in iter_queries(sys.argv[1]))
print(count, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_format_streams_in_memory_bounded_by_a_batch_not_the_file(tmp_path: Path, suffix: str) -> None:
    rows = 12_000
    frame = pd.DataFrame({"prompt": [f"{i} " + "lorem ipsum " * 170 for i in range(rows)]})  # 24 MB of text
    path = tmp_path / f"q{suffix}"
    write_frame(frame, path, row_group_size=2000)  # Parquet is read a row group at a time
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True, timeout=300, cwd=SOURCE_TREE
    )
    assert run.returncode == 0, run.stderr[-3000:]
    count, grown_mib = run.stdout.split()
    assert int(count) == rows
    assert float(grown_mib) < 12, f"reading {suffix} grew the peak RSS by {grown_mib} MiB for 24 MiB of queries"


# --- 14. --limit and duplicates -------------------------------------------------------------------------------


def test_limit_counts_distinct_non_empty_queries(tmp_path: Path) -> None:
    texts = ["", "a", " a ", "   ", "b", "c"]
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": t} for t in texts])

    queries = load_queries(str(path), limit=2)

    assert [q.prompt for q in queries.queries] == ["a", "b"]
    assert [q.prompt for q in queries.empty] == [""] and queries.duplicates == 2


def test_duplicates_are_matched_after_nfc_and_whitespace_folding_keeping_case(tmp_path: Path) -> None:
    texts = [
        "Café au lait?", "Cafe\u0301 au lait?",  # the same characters, two encodings
        "Sum  these:\tx and y", "Sum these: x and y",  # inner whitespace runs
        "Line one   \n\n\n\nLine two", "Line one\n\nLine two",  # trailing spaces, blank-line runs
        "x² + 1", "x2 + 1",  # compatibility forms stay apart (NFC, not NFKC)
        "Hello", "hello",  # case is kept
        "a\nb", "a b",  # a line break is not a space
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": t} for t in texts])

    queries = load_queries(str(path))

    assert [q.prompt for q in queries.queries] == [t.strip() for t in texts[::2][:3]] + texts[6:]
    assert queries.duplicates == 3


def test_conversations_differing_only_in_their_system_turn_are_both_kept(tmp_path: Path) -> None:
    def conversation(system: str) -> dict:
        return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": "Introduce yourself."}]}

    rows = [conversation("You are a pirate."), conversation("You are a lawyer."), conversation("You are a pirate.")]
    queries = load_queries(str(write_jsonl(tmp_path / "q.jsonl", rows)))

    assert [q.system for q in queries.queries] == ["You are a pirate.", "You are a lawyer."]
    assert len({q.prompt_id for q in queries.queries}) == 2 and queries.duplicates == 1
    assert all(q.messages() == [{"role": "user", "content": "Introduce yourself."}] for q in queries.queries)


def test_prompt_id_is_unchanged_for_text_already_in_normal_form() -> None:
    def before(text: str) -> str:  # the id of ssogen 0.x: the stripped text only
        return hashlib.sha256(json.dumps([["user", text.strip()]], ensure_ascii=False).encode()).hexdigest()[:16]

    for text in ("Hello", "Name a colour.\n\nPick one.", "  padded  ", "Café"):
        assert prompt_id(text) == before(text)
    assert prompt_id("a  b") == prompt_id("a b") != before("a  b")
