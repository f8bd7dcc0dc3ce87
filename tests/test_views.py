"""The exported folder: every view loads with `datasets`, splits agree across views, the card, no secrets."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest
from datasets import load_dataset

from ssogen.config import BuildConfig
from ssogen.generation.plan import run_settings
from ssogen.inputs.library import Templates
from ssogen.inputs.models import ModelRef
from ssogen.output.export import export_folder
from ssogen.output.store import OutputFolder
from ssogen.output.views import VIEWS, dpo_row, reference_row, reward_row, split_of, steer_neg_row, steer_pos_row
from tests.conftest import make_record as record

FAKE_TOKEN = "hf_" + "Z" * 34


def export(tmp_path, rows, dropped_rows=(), test_size=0.3):
    """Export `rows` (kept records) and `dropped_rows` (DROPPED_SCHEMA rows) as one build's chunks would be."""
    folder = OutputFolder(tmp_path)
    settings = run_settings(BuildConfig(), ModelRef(path="m", name="m", revision="r"), Templates(None))
    folder.prepare(settings, overwrite=False)
    chunk = [{**row, "drop_reason": None} for row in rows] + [
        {**{k: v for k, v in d.items() if k != "reason"}, "drop_reason": d["reason"]} for d in dropped_rows
    ]
    folder.write_chunk(chunk)
    order = [row["prompt_id"] for row in chunk]
    result = export_folder(folder, order, templates=Templates(None), settings=settings, seed=0, test_size=test_size)
    return result.counts


def test_each_view_maps_the_record_to_its_pair():
    row = record(1, context=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    turns = [*row["context"], {"role": "user", "content": "question 1"}]
    assert dpo_row(row)["prompt"] == turns
    assert dpo_row(row)["chosen"] == [{"role": "assistant", "content": "good 1"}]
    assert dpo_row(row)["rejected"] == [{"role": "assistant", "content": "bad 1"}]
    assert steer_pos_row(row)["prompt"][0] == {"role": "system", "content": "be good"}
    neg = steer_neg_row(row)
    assert neg["prompt"][0] == {"role": "system", "content": "be bad"}
    assert (neg["chosen"][0]["content"], neg["rejected"][0]["content"]) == ("plain 1", "good 1")
    assert reward_row(row)["chosen"] == [*turns, {"role": "assistant", "content": "good 1"}]
    ref = reference_row(row)
    assert (ref["system"], ref["p_system"], ref["n_system"], ref["raw"]) == ("", "be good", "be bad", "plain 1")
    assert (ref["instruction"], ref["history"]) == ("question 1", [["hi", "hello"]])


def test_views_carry_the_turns_generation_used_when_the_template_has_no_system_role():
    row = record(1, steering_in_user=True, system="You are terse.")
    pos, neg = steer_pos_row(row)["prompt"], steer_neg_row(row)["prompt"]
    # As generation did: p+ / p- (and the query's own system turn) merged into the user turn, no system turn.
    assert pos == [{"role": "user", "content": "be good\n\nYou are terse.\n\nquestion 1"}]
    assert neg == [{"role": "user", "content": "be bad\n\nYou are terse.\n\nquestion 1"}]
    assert dpo_row(row)["prompt"] == [{"role": "user", "content": "You are terse.\n\nquestion 1"}]
    with_system = record(1, system="You are terse.")
    assert steer_pos_row(with_system)["prompt"][0] == {"role": "system", "content": "be good\n\nYou are terse."}
    assert dpo_row(with_system)["prompt"][0] == {"role": "system", "content": "You are terse."}


def test_split_is_seeded_and_decided_per_query():
    ids = [f"{i:016x}" for i in range(2000)]
    share = sum(split_of(i, 0, 0.05) == "test" for i in ids) / len(ids)
    assert 0.03 < share < 0.07
    assert [split_of(i, 0, 0.05) for i in ids] == [split_of(i, 0, 0.05) for i in ids]
    assert [split_of(i, 0, 0.05) for i in ids] != [split_of(i, 1, 0.05) for i in ids]


def test_every_config_of_a_real_build_loads_with_datasets(built_folder):
    card = (built_folder / "README.md").read_text()
    names = re.findall(r"config_name: (\w+)", card)
    assert set(VIEWS) <= set(names)
    for name in names:
        dataset = load_dataset(str(built_folder), name)
        assert sum(len(split) for split in dataset.values()) > 0
        assert "prompt_id" in dataset["train"].column_names


def test_all_views_put_the_same_queries_in_test(built_folder):
    test_ids = {}
    for name in VIEWS:
        files = list((built_folder / "data" / name).glob("test-*.parquet"))
        test_ids[name] = (
            set(pa.concat_tables([pa.parquet.read_table(f) for f in files])["prompt_id"].to_pylist())
            if files
            else set()
        )
    assert len({frozenset(v) for v in test_ids.values()}) == 1


def test_column_types_are_stable_across_runs(tmp_path):
    first = export(tmp_path / "a", [record(i) for i in range(6)])
    second = export(tmp_path / "b", [record(i, context=[{"role": "user", "content": "x"}]) for i in range(10, 13)])
    assert set(first) == set(second)
    for name in VIEWS:
        features_a = load_dataset(str(tmp_path / "a"), name, split="train").features
        features_b = load_dataset(str(tmp_path / "b"), name, split="train").features
        assert features_a == features_b, name


def test_card_of_a_run_without_drops(tmp_path):
    counts = export(tmp_path, [record(i) for i in range(4)], test_size=0.0)
    card = (tmp_path / "README.md").read_text()
    assert "dropped" not in counts and "config_name: dropped" not in card
    assert "No query was dropped." in card
    assert card.startswith("---\n") and "task_categories:" in card and "size_categories:" in card
    assert card.count("**Query:**") == 3
    assert "DPOTrainer" in card and "RewardTrainer" in card


def test_card_of_a_run_with_drops_lists_the_reasons(tmp_path):
    dropped = [
        {"prompt_id": "d1", "prompt": "q", "reason": "chosen_equals_rejected", "features": []},
        {"prompt_id": "d2", "prompt": "q2", "reason": "chosen_equals_rejected", "features": []},
        {"prompt_id": "d3", "prompt": "", "reason": "empty_query", "features": []},
    ]
    counts = export(tmp_path, [record(i) for i in range(3)], dropped, test_size=0.0)
    card = (tmp_path / "README.md").read_text()
    assert counts["dropped"] == {"train": 3}
    assert "| chosen_equals_rejected | 2 |" in card and "| empty_query | 1 |" in card
    assert load_dataset(str(tmp_path), "dropped", split="train")["reason"].count("empty_query") == 1


def test_the_dropped_table_keeps_the_answers_of_a_query_dropped_after_sampling(tmp_path):
    loop = {"chosen": "yes " * 50, "rejected": "no", "original": "maybe"}
    dropped = [
        {"prompt_id": "d1", "prompt": "q", "reason": "degenerate_chosen", "features": ["Safety"], **loop}
        | {"finish_chosen": "repetition", "finish_rejected": "stop", "finish_original": "stop"},
        {"prompt_id": "d2", "prompt": "", "reason": "empty_query", "features": []},
    ]
    export(tmp_path, [record(i) for i in range(3)], dropped, test_size=0.0)
    table = load_dataset(str(tmp_path), "dropped", split="train").to_pandas().set_index("prompt_id")
    assert table.loc["d1", "chosen"] == loop["chosen"] and table.loc["d1", "finish_chosen"] == "repetition"
    assert table.loc["d1", "original"] == "maybe"
    assert table.loc["d2", ["chosen", "rejected", "original", "finish_chosen"]].isna().all()  # never sampled


# What the SSO authors' LLaMA-Factory fork reads (myllamafactory/src/llamafactory/data/parser.py, aligner.py):
# DatasetAttr columns for formatting "sso" are the common ones, the alpaca ones and raw / p_system / n_system;
# convert_sso reads history as [user, assistant] pairs and the pairwise example needs ranking true.
FORK_SSO_COLUMNS = {"system", "tools", "images", "videos", "chosen", "rejected", "kto_tag", "prompt", "query",
                    "response", "history", "raw", "p_system", "n_system"}  # fmt: skip


def test_dataset_info_is_the_authors_sso_format_one_entry_per_split(built_folder):
    info = json.loads((built_folder / "dataset_info.json").read_text())
    splits = {p.name.split("-")[0] for p in (built_folder / "data" / "sso_reference").glob("*.parquet")}
    assert set(info) == {"ssogen_sso"} | {f"ssogen_sso_{split}" for split in splits}
    for name, entry in info.items():
        assert entry["formatting"] == "sso" and entry["ranking"] is True
        assert set(entry["columns"]) <= FORK_SSO_COLUMNS
        assert {"prompt", "history", "system", "chosen", "rejected", "raw", "p_system", "n_system"} <= set(
            entry["columns"]
        )
        table = load_dataset("parquet", data_files=str(built_folder / entry["file_name"]), split="train")
        assert set(entry["columns"].values()) <= set(table.column_names), name
        for example in table:
            # convert_sso: `for old_prompt, old_response in example[history]`, and the three answers as text.
            assert all(len(pair) == 2 for pair in example["history"])
            assert all(isinstance(example[c], str) for c in ("chosen", "rejected", "raw", "p_system", "n_system"))
    assert info["ssogen_sso"] == info["ssogen_sso_train"]


def test_no_token_shaped_string_is_written_anywhere(built_folder):
    for path in built_folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert FAKE_TOKEN.encode() not in data, path
            assert not re.search(rb"hf_[A-Za-z0-9]{30,}", data), path


@pytest.fixture(autouse=True, scope="module")
def _offline():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
