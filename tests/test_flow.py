"""The continuous flow: the engine kept full across chunks, every query exactly once, engine steps counted."""

from __future__ import annotations

import math
import os
import threading
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from ssogen.config import BuildConfig
from ssogen.generation.engine import Request
from ssogen.generation.flow import SEQUENCES_PER_QUERY, SLOT_MARGIN, FlowService, admission_window, flow_chunks, prepare
from ssogen.output.store import CHUNKS_DIR
from tests.conftest import QUERIES, build_in_process

FLOW_ARGS = ("--limit", "12", "--max-new-tokens", "48", "--chunk-size", "3", "--enforce-eager")


LOOP_ASK = "Write the word yes 500 times, separated by spaces, and nothing else."
# The loop watch's tests: the loop the watch sees first (its checkpoints every 32 tokens from 128) fits below it.
LOOP_LIMIT = 384


def user_prompt(tokenizer, content: str) -> list[int]:
    """The chat prompt of one user message, as the bundled model's template renders it."""
    from ssogen.inputs.chat import ChatFormat

    return ChatFormat(tokenizer).prompt_ids([{"role": "user", "content": content}])


def small_plan(queries, tmp_path, **settings):
    from ssogen.generation.plan import plan_build

    return plan_build(BuildConfig(queries=str(queries), max_model_len=2048, output=tmp_path / "o", **settings))


def test_the_admission_window_keeps_about_two_steps_of_sequences_in_flight():
    assert SLOT_MARGIN == 2.0 and SEQUENCES_PER_QUERY == 3
    assert admission_window(SimpleNamespace(max_num_seqs=256)) == math.ceil(2 * 256 / 3) == 171
    assert admission_window(SimpleNamespace(max_num_seqs=1)) == 1


def test_on_cpu_the_engine_skips_graph_compilation_unless_asked_for_it(engine):
    from ssogen.cli import make_parser

    # The session engine was given no enforce_eager: on this CPU it resolved to eager, and vLLM runs that way.
    assert engine.on_cpu and engine.settings.enforce_eager is True
    assert engine.llm.llm_engine.vllm_config.model_config.enforce_eager is True
    parse = make_parser().parse_args
    assert not hasattr(parse(["build"]), "enforce_eager")  # left to the engine's default
    assert parse(["build", "--no-enforce-eager"]).enforce_eager is False


def test_on_cpu_the_kv_cache_is_a_fixed_share_of_ram_whatever_the_numa_node_reports(engine):
    from ssogen.generation.engine import CPU_KV_CACHE_FRACTION, cpu_kv_cache_bytes

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert cpu_kv_cache_bytes() == int(CPU_KV_CACHE_FRACTION * ram)
    config = engine.llm.llm_engine.vllm_config
    assert config.cache_config.kv_cache_memory_bytes == cpu_kv_cache_bytes()
    # The engine holds that cache: its blocks times the bytes a block takes (keys and values, every layer).
    model = config.model_config
    per_token = 2 * model.get_num_layers(config.parallel_config) * model.get_total_num_kv_heads()
    per_token *= model.get_head_size() * 4  # float32, the session engine's dtype
    held = config.cache_config.num_gpu_blocks * engine.block_size * per_token
    assert 0.9 * cpu_kv_cache_bytes() <= held <= cpu_kv_cache_bytes()


def test_engine_steps_and_sequences_per_step_are_counted_from_the_engine_outputs(engine, tokenizer):
    requests = [
        Request(user_prompt(tokenizer, f"Count to {i}."), seed=i, max_tokens=7, ignore_eos=True) for i in range(5)
    ]
    steps, sequences = engine.stats.steps, engine.stats.step_sequences
    done = engine.generate(requests)
    assert [len(c.token_ids) for c in done] == [7] * 5
    # Every token of every sequence was produced in some step: the per-step counts add up to all the tokens.
    assert engine.stats.step_sequences - sequences == 35
    # Released together, the five sequences decode side by side: 7 steps (one more if the prefill was split).
    assert 7 <= engine.stats.steps - steps <= 8


def test_a_forced_loop_is_ended_by_the_engines_repetition_check_well_short_of_its_limit(engine, tokenizer):
    from ssogen.generation.engine import Repetition

    prompt = user_prompt(tokenizer, LOOP_ASK)

    def ask(repetition: Repetition | None):
        # Greedy, and the end of turn ignored: the answer can only end by the check or by the limit.
        request = Request(prompt, seed=0, max_tokens=256, temperature=0.0, ignore_eos=True, repetition=repetition)
        return engine.generate([request])[0]

    checked, unchecked = ask(Repetition(1, 32, 8)), ask(None)
    assert unchecked.finish_reason == "length" and len(unchecked.token_ids) == 256  # it does loop
    assert checked.finish_reason == "repetition" and len(checked.token_ids) < 128, checked.text[-200:]
    assert checked.token_ids == unchecked.token_ids[: len(checked.token_ids)]  # stopped, not steered elsewhere


def test_every_answer_is_watched_for_loops_at_the_loop_compression_setting_and_zero_turns_the_watch_off(tmp_path):
    from ssogen.generation.engine import LoopWatch
    from ssogen.generation.stages import ROLES, answer_request

    for threshold, watch in ((0.2, LoopWatch(0.2)), (0.0, None)):
        plan = small_plan(QUERIES, tmp_path, limit=1, max_new_tokens=16, loop_compression=threshold)
        query = plan.queries.queries[0]
        assert [answer_request(plan, query, role, [1, 2]).loop_watch for role in ROLES] == [watch] * 3


def test_a_query_dropped_for_a_looping_chosen_answer_keeps_its_answers_to_be_read(tmp_path):
    from ssogen.generation.engine import Completion
    from ssogen.generation.stages import Setup, query_stages

    plan = small_plan(QUERIES, tmp_path, limit=1, max_new_tokens=16, feature_selection="random")
    stages = query_stages(Setup(plan, 2048), plan.queries.queries[0])
    asked = next(stages)
    assert sorted(asked) == ["chosen", "original", "rejected"]
    got = {
        "chosen": Completion("yes yes yes", [1, 2, 3], "repetition"),
        "rejected": Completion("A short answer.", [4, 5], "stop"),
        "original": Completion("Another answer.", [6, 7], "stop"),
    }
    with pytest.raises(StopIteration) as finished:
        stages.send(got)
    row = finished.value.value
    assert row["drop_reason"] == "degenerate_chosen"
    assert (row["chosen"], row["finish_chosen"], row["tokens_chosen"], row["degenerate_chosen"]) == (
        "yes yes yes",
        "repetition",
        3,
        True,
    )
    assert (row["rejected"], row["finish_original"], row["degenerate_original"]) == ("A short answer.", "stop", False)


def test_a_loop_is_aborted_at_the_watchs_first_checkpoint_and_a_watched_answer_is_otherwise_unchanged(
    engine, tokenizer
):
    from ssogen.generation.engine import LoopWatch
    from ssogen.generation.quality import written_is_loop

    loop = user_prompt(tokenizer, LOOP_ASK)
    prose = user_prompt(tokenizer, "Name three fruits and say one thing about each.")
    watch = LoopWatch(0.15, start=128, every=32)

    def ask(prompt: list[int], watched: bool, **kwargs):
        request = Request(prompt, seed=3, max_tokens=LOOP_LIMIT, loop_watch=watch if watched else None, **kwargs)
        engine.reset_prefix_cache()  # both runs compute the same floats
        return engine.generate([request])[0]

    aborted_before = engine.stats.loops_aborted
    # Greedy with the end of turn ignored: only the limit or the watch can end it.
    looped, unwatched = (ask(loop, w, temperature=0.0, ignore_eos=True, logprobs=True) for w in (True, False))
    assert unwatched.finish_reason == "length" and len(unwatched.token_ids) == LOOP_LIMIT
    # Aborted at the first checkpoint (128, 160, …) whose tail is long enough to judge and compresses as a loop.
    ids = unwatched.token_ids
    first = next(
        n for n in range(128, LOOP_LIMIT + 1, 32) if written_is_loop(tokenizer.decode(ids[:n]), 0.15, watch.tail_bytes)
    )
    assert looped.finish_reason == "repetition" and len(looped.token_ids) == first < LOOP_LIMIT, looped.text[-200:]
    assert looped.token_ids == ids[:first] and unwatched.text.startswith(looped.text)
    assert looped.token_logprobs == pytest.approx(unwatched.token_logprobs[:first])
    assert engine.stats.loops_aborted == aborted_before + 1
    # An answer that does not loop comes back whole and the same, read a piece per step or at once.
    watched, plain = (ask(prose, w, logprobs=True) for w in (True, False))
    assert watched.finish_reason == plain.finish_reason == "stop"
    assert (watched.text, watched.token_ids) == (plain.text, plain.token_ids)
    assert watched.token_logprobs == pytest.approx(plain.token_logprobs)


def test_a_query_whose_chosen_answer_is_stopped_as_a_loop_has_its_other_answers_abandoned_at_once(
    engine, tokenizer, monkeypatch
):
    import ssogen.generation.flow
    from ssogen.generation.engine import LoopWatch
    from ssogen.generation.flow import Flow

    loop = user_prompt(tokenizer, LOOP_ASK)
    story = user_prompt(tokenizer, "Tell a long story about a lighthouse keeper.")
    watch = LoopWatch(0.15, start=128, every=32)

    def stages(setup, query):  # the real engine; one query's answer stage, its looping side set by the test
        got = yield {
            role: Request(
                loop if role == query.looping else story,
                seed=i,
                max_tokens=LOOP_LIMIT,
                temperature=0.0 if role == query.looping else 0.7,
                ignore_eos=True,
                loop_watch=watch,
            )
            for i, role in enumerate(("chosen", "rejected", "original"))
        }
        return {"prompt_id": query.prompt_id, **got}

    monkeypatch.setattr(ssogen.generation.flow, "query_stages", stages)
    # y+ or y° looping (two queries side by side) drops the query: its other answers end with the loop, and the
    # engine stops well short of the limit. A looping y- is kept: its others are written to the end.
    for loopings, abandoned in ((("chosen", "original"), 2), (("rejected",), 0)):
        before = (engine.stats.steps, engine.stats.abandoned)
        flow = Flow(engine, None)
        for looping in loopings:
            flow.add(SimpleNamespace(prompt_id=looping, looping=looping))
        rows = []
        while flow.in_flight:
            rows += flow.step()
        flow.close()
        assert not flow.stream.pending
        assert sorted(row["prompt_id"] for row in rows) == sorted(loopings)
        for row in rows:
            looping = row["prompt_id"]
            assert row[looping].finish_reason == "repetition" and len(row[looping].token_ids) < LOOP_LIMIT
            others = [row[role] for role in ("chosen", "rejected", "original") if role != looping]
            if abandoned:
                assert [a.finish_reason for a in others] == ["abandoned"] * 2
                # They were written side by side with the loop, so they hold about as many tokens as it did.
                assert all(0 < len(a.token_ids) <= len(row[looping].token_ids) + 2 for a in others)
            else:
                assert [len(a.token_ids) for a in others] == [LOOP_LIMIT, LOOP_LIMIT]
        if abandoned:
            assert engine.stats.steps - before[0] < LOOP_LIMIT - 64
        assert engine.stats.abandoned - before[1] == abandoned * len(loopings)


def test_an_abandoned_answer_reports_the_tokens_the_engine_had_generated_for_it_though_its_text_was_not_read(
    engine, tokenizer
):
    from ssogen.generation.engine import Repetition

    loop = user_prompt(tokenizer, LOOP_ASK)
    story = user_prompt(tokenizer, "Tell a long story about a lighthouse keeper.")
    before = engine.stats.abandoned_tokens
    stream = engine.stream("abandon test", progress=False)
    # Greedy, ended by vLLM's repetition check; the two others are not watched, so their text is never read.
    stream.generate("loop", Request(loop, 0, 384, temperature=0.0, ignore_eos=True, repetition=Repetition(1, 8, 8)))
    for seed in (1, 2):
        stream.generate(seed, Request(story, seed, 384, ignore_eos=True))
    finished: dict = {}
    while "loop" not in finished:
        finished |= dict(stream.step())
    looped = finished["loop"]
    assert looped.finish_reason == "repetition" and len(looped.token_ids) < 384
    left = [stream.abandon(seed) for seed in (1, 2)]
    assert [c.finish_reason for c in left] == ["abandoned"] * 2 and all(c.token_ids == [] for c in left)
    # They were written side by side with the loop (same steps), so they hold as many tokens as it did.
    assert all(abs(c.abandoned_tokens - len(looped.token_ids)) <= 2 for c in left), [c.abandoned_tokens for c in left]
    assert engine.stats.abandoned_tokens - before == sum(c.abandoned_tokens for c in left)
    assert not stream.pending and not engine.stats.tokens_in_flight  # nothing left counted for a request gone
    stream.close()


def test_queries_added_to_an_idle_engine_wait_one_step_behind_the_first_so_they_can_read_its_cached_prompt(
    engine, tmp_path
):
    from ssogen.generation.flow import Flow

    plan = small_plan(QUERIES, tmp_path, limit=4, max_new_tokens=8)
    setup = prepare(engine, plan)
    flow = Flow(engine, setup)
    for query in plan.queries.queries:
        flow.add(query)
    in_flight = lambda: sorted(item.key for item in flow.stream.pending.values())  # noqa: E731
    assert in_flight() == [(0, "select")]  # the leader's selection prompt alone
    flow.step()
    assert {order for order, _ in in_flight()} == {0, 1, 2, 3}
    assert [key for key in in_flight() if key[0] > 0] == [(1, "select"), (2, "select"), (3, "select")]
    flow.step()  # they went in together (held until this step), so they all finished in it
    assert not [key for key in in_flight() if key[1] == "select"]
    rows = []
    while flow.in_flight:
        rows += flow.step()
    flow.close()
    assert len(rows) == 4 and {row["prompt_id"] for row in rows} == {q.prompt_id for q in plan.queries.queries}


def test_the_continuous_flow_needs_fewer_engine_steps_than_held_chunks(engine, tmp_path):
    plan = small_plan(QUERIES, tmp_path, limit=6, max_new_tokens=24)
    setup = prepare(engine, plan)
    queries = plan.queries.queries
    steps = {}
    for reproducible in (True, False):
        before = engine.stats.steps
        rows = [
            row
            for chunk in flow_chunks(engine, setup, queries, chunk_size=2, reproducible=reproducible)
            for row in chunk
        ]
        steps[reproducible] = engine.stats.steps - before
        assert sorted(r["prompt_id"] for r in rows) == sorted(q.prompt_id for q in queries)
    # Held chunks of 2 drain the engine three times (select, sample, score each); one flow does it once.
    assert steps[False] < 0.7 * steps[True], steps


def test_the_selection_calibration_is_scored_once_per_engine_settings_and_then_read_from_the_cache(
    engine, tmp_path, monkeypatch
):
    plan = small_plan(QUERIES, tmp_path, limit=2, max_new_tokens=16)
    monkeypatch.setenv("SSOGEN_CACHE", str(tmp_path / "cache"))  # after the plan found the bundled model

    def calibration_tokens() -> int:
        return engine.stats.tokens_by_call["calibrate selection"]

    before = calibration_tokens()
    first = prepare(engine, plan)
    scored = calibration_tokens() - before
    assert scored >= 80  # one token per reference query
    [cached] = (tmp_path / "cache" / "calibration").glob("*.json")
    second = prepare(engine, plan)
    assert calibration_tokens() - before == scored  # nothing asked of the engine the second time
    assert second.calibration == first.calibration and len(first.calibration) == len(first.name_ids) > 2
    # A damaged cache file is scored again, not trusted.
    cached.write_text("{not json")
    third = prepare(engine, plan)
    assert calibration_tokens() - before == 2 * scored and third.calibration == first.calibration


def test_a_flow_service_fed_by_two_callers_gives_each_its_own_rows(engine, tmp_path):
    plan = small_plan(QUERIES, tmp_path, limit=4, max_new_tokens=16)
    service = FlowService(engine, prepare(engine, plan))
    queries = plan.queries.queries
    results: dict[int, list] = {}

    def call(index: int) -> None:
        results[index] = service.run(queries[2 * index : 2 * index + 2])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    for index in range(2):
        assert sorted(r["prompt_id"] for r in results[index]) == sorted(
            q.prompt_id for q in queries[2 * index : 2 * index + 2]
        )


def chunk_files(out):
    return sorted((out / CHUNKS_DIR).glob("chunk-*.parquet"))


def test_a_continuous_build_saves_chunks_as_they_complete_and_a_run_cut_short_resumes_to_every_query_once(
    tmp_path, engine
):
    """In this process, on the session's engine. A kill -9 in its own process, and the bit-exact resume after it,
    are tests/test_resume.py's: the resume reads the same chunks whichever flow wrote them."""
    queries = QUERIES
    out = tmp_path / "out"
    argv = ("--queries", str(queries), *FLOW_ARGS, "--output", str(out))
    first = threading.Thread(target=build_in_process, args=(engine, *argv))
    first.start()
    deadline = time.monotonic() + 900
    while not chunk_files(out):
        assert first.is_alive(), "the build ended before any chunk was seen"
        assert time.monotonic() < deadline, "no chunk finished in time"
        time.sleep(0.05)
    assert first.is_alive()  # a chunk is on disk while the build runs: saved as it completed
    first.join(timeout=900)
    saved = chunk_files(out)
    assert len(saved) == 4 and all(len(pd.read_parquet(path)) == 3 for path in saved)

    # What a kill leaves: the chunks finished before it, and a hidden part of the one being written.
    for lost in saved[2:]:
        lost.unlink()
    (out / CHUNKS_DIR / f".{saved[2].name}.partial").write_bytes(b"PAR1 half a chunk")
    resumed = build_in_process(engine, *argv)
    assert (resumed.resumed, resumed.total) == (6, 12)
    assert not list((out / CHUNKS_DIR).glob(".*"))  # the partial write was removed
    ids = [pid for chunk in chunk_files(out) for pid in pd.read_parquet(chunk).prompt_id]
    assert len(ids) == len(set(ids)) == 12  # every query exactly once across both runs
    kept = pd.concat([pd.read_parquet(p) for p in (out / "data" / "sso").glob("*.parquet")])
    for row in kept.to_dict("records"):
        assert row["chosen"].strip() and row["rejected"].strip() and row["original"].strip()
        assert 0.0 < row["weight"] < 1.0 and all(
            math.isfinite(row[f"logp_{r}"]) for r in ("chosen", "rejected", "original")
        )
