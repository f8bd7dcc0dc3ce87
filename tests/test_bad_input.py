"""Bad settings and inputs: exit status 2, a message naming the culprit and the fix, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ssogen.inputs.library import resource_dir
from tests.conftest import run_cli


def queries_file(tmp_path: Path, name: str, content: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def bad_library(tmp_path: Path, name: str, text: str) -> str:
    folder = tmp_path / "principles"
    shutil.copytree(resource_dir("principles"), folder)
    (folder / name).write_text(text)
    return str(folder)


def model_without_chat_template(tmp_path: Path, model_path: str) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in Path(model_path).iterdir():
        if item.name == "chat_template.jinja":
            continue
        if item.name == "tokenizer_config.json":
            config = json.loads(item.read_text())
            config.pop("chat_template", None)
            (folder / item.name).write_text(json.dumps(config))
        else:
            (folder / item.name).symlink_to(item)
    return str(folder)


CASES = {
    "missing queries file": (lambda t, m: ["--queries", str(t / "nope.jsonl")], ["--queries", "does not exist"]),
    "unknown format": (lambda t, m: ["--queries", queries_file(t, "q.txt", "hi")], ["unknown format .txt"]),
    "malformed json line": (
        lambda t, m: ["--queries", queries_file(t, "q.jsonl", '{"prompt": "a"}\n{"prompt": oops}\n')],
        ["line 2", "malformed JSON"],
    ),
    "no query column": (
        lambda t, m: ["--queries", queries_file(t, "q.jsonl", '{"text": "a", "id": 1}\n')],
        ["columns found: text, id", "--query-column"],
    ),
    "wrong query column": (
        lambda t, m: ["--queries", queries_file(t, "q.jsonl", '{"prompt": "a"}\n'), "--query-column", "body"],
        ["--query-column", "no column 'body'"],
    ),
    "non-utf8 bytes": (
        lambda t, m: ["--queries", queries_file(t, "q.jsonl", b'{"prompt": "a"}\n{"prompt": "\xff"}\n')],
        ["line 2", "UTF-8"],
    ),
    "alpha above 1": (lambda t, m: ["--alpha", "1.5"], ["--alpha", "between 0 and 1"]),
    "negative temperature": (lambda t, m: ["--temperature", "-0.1"], ["--temperature"]),
    "top-p zero": (lambda t, m: ["--top-p", "0"], ["--top-p", "(0, 1]"]),
    "top-p above 1": (lambda t, m: ["--top-p", "1.5"], ["--top-p"]),
    "max-new-tokens zero": (lambda t, m: ["--max-new-tokens", "0"], ["--max-new-tokens"]),
    "num-features zero": (lambda t, m: ["--num-features", "0"], ["--num-features"]),
    "num-features above library": (lambda t, m: ["--num-features", "8"], ["--num-features", "at most 7"]),
    "limit zero": (lambda t, m: ["--limit", "0"], ["--limit"]),
    "malformed principle yaml": (
        lambda t, m: ["--principles", bad_library(t, "broken.yaml", "name: [oops\n")],
        ["broken.yaml", "not valid YAML"],
    ),
    "principle missing a field": (
        lambda t, m: ["--principles", bad_library(t, "half.yaml", "name: Half\nadjectives: [A, B]\nmeaning: m\n")],
        ["half.yaml", "'positive'"],
    ),
    "missing model path": (lambda t, m: ["--model", str(t / "no-model")], ["--model", "neither an existing folder"]),
    "model without chat template": (
        lambda t, m: ["--model", model_without_chat_template(t, m)],
        ["--model", "no chat template"],
    ),
    "malformed hub repo id": (lambda t, m: ["--push-to-hub", "just-a-name"], ["--push-to-hub", "ORG/NAME"]),
    "bad flag value type": (lambda t, m: ["--seed", "abc"], ["--seed", "invalid int value"]),
}


@pytest.mark.parametrize(
    "case",
    # Only this one loads a model's tokenizer and config (seconds): the fast tier skips it.
    [pytest.param(c, marks=pytest.mark.slow) if c == "model without chat template" else c for c in CASES],
)
def test_bad_input_exits_2_with_a_clear_message_and_writes_nothing(case, tmp_path, bundled_model):
    make_args, expected = CASES[case]
    out = tmp_path / "out"
    result = run_cli("build", *make_args(tmp_path, bundled_model.path), "--output", str(out), timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    for fragment in expected:
        assert fragment in result.stderr, (fragment, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_an_output_path_that_is_a_file_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "out"
    target.write_text("my notes")
    result = run_cli("build", "--output", str(target), timeout=120)
    assert result.returncode == 2 and "--output" in result.stderr and "is a file" in result.stderr
    assert target.read_text() == "my notes"


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("build", "--debug", "--queries", str(tmp_path / "nope.jsonl"), timeout=120)
    assert result.returncode == 2 and "Traceback" in result.stderr


@pytest.mark.slow
def test_empty_and_duplicate_queries_are_counted_and_the_run_goes_on(tmp_path):
    """Only empty queries: nothing to generate, so no engine starts; they are reported as dropped."""
    path = queries_file(tmp_path, "q.jsonl", '{"prompt": ""}\n{"prompt": "   "}\n')
    out = tmp_path / "out"
    result = run_cli("build", "--queries", path, "--output", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 duplicates removed" in result.stderr  # "" and "   " normalise to the same query
    dropped = pd.read_parquet(out / "data" / "dropped" / "train-00000-of-00001.parquet")
    assert list(dropped.reason) == ["empty_query"]
    assert "empty_query" in (out / "README.md").read_text()
