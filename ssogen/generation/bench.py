"""`ssogen bench`: how close the build path runs to the engine's own ceiling, measured side by side.

Owns three measurements in one process on one warmed engine, over the same queries and sampling settings:
    ssogen     the real build path over all the queries in chunks of --chunk-size, exactly as `build` runs
               it (the continuous flow, or held batches per chunk with --reproducible): feature selection,
               contrastive prompts, sampling, scoring, W; nothing written;
    raw        the ceiling: ONE engine call generating the y+ / y- / y° answers the ssogen run sampled, each
               replayed to exactly its length (no selection, no scoring, no log-probabilities; the text written
               by vLLM as it goes, its default), so both runs decode the same number of tokens per sequence;
               an answer abandoned when its query was dropped is replayed to the tokens the build's engine had
               generated for it by then;
    reference  the SSO authors' procedure re-created: sequential batches of 16 queries, one sampled
               feature-selection call, then one engine call per role per batch, no scoring (skipped with
               --no-reference: it is the slowest of the three).
Throughput counts the answer tokens (y+, y-, y°) each run generated over its wall time. Beside it, what a
GPU pays for, counted on any device: the engine steps that produced tokens (a decode step reads every
weight whatever the batch, so on a GPU the steps are the time) and the sequences per such step.
``steps_vs_raw`` is ssogen's steps over raw's and ``occupancy`` ssogen's sequences per step over raw's.
And what the host pays for: the front-end process's CPU time (user + system, every thread: vLLM's output
processing, its engine-core client, ssogen's flow and stages; the engine core runs in other processes) per
answer token, and the answer tokens per second one such core could feed (on a GPU the engine core produces
10-20k tokens/s, and a front-end slower than that leaves it waiting). CPU time per token depends far less than
wall time on the device's speed and on other jobs sharing the machine; only the threads that wake on a timer
(vLLM's engine-core monitor, ssogen's watchdog) add CPU in proportion to the wall time: several µs per token on
a 2-core CPU shared with other jobs, next to nothing on a GPU. Beside an engine core busy on the same cores, though,
every instruction of the front-end runs slower, and on a 2-core CPU that moves the figure several-fold between runs.
So each ssogen and raw run is also played back to the front-end alone (``alone``): what the engine core sent during
the run, recorded, is fed to the same front-end with no engine working (`ssogen.generation.core_tape`), three times,
and the least of the process's CPU times then is the front-end's own.
The last line printed is ``bench: vs_raw=… vs_reference=… raw_vs_reference=… steps_vs_raw=… occupancy=…
host_us_per_token=… raw_host_us_per_token=… host_vs_raw=… … alone_us_per_token=… raw_alone_us_per_token=…
alone_vs_raw=… …`` (medians over --repeats); the ratios are the point, absolute seconds mean little on a shared
machine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ssogen.generation.core_tape import TapeDiverged, can_tape, playing, recording
from ssogen.generation.engine import Completion, Engine, Request
from ssogen.generation.flow import flow_chunks, prepare
from ssogen.generation.plan import Plan
from ssogen.generation.stages import ROLES, Setup, query_stages

logger = logging.getLogger(__name__)

REFERENCE_BATCH = 16
# Plays of each run to the front-end alone. The machine only ever adds to the code's own CPU time (the first play
# after a live run has measured up to 2.6x the next ones, with no code path of its own), so the least is the figure.
PLAYS = 3
MEASUREMENTS = ("ssogen", "raw", "reference")


@dataclass
class Measurement:
    """One timed run: its wall time, the answer tokens it generated, how full the engine's steps were, and the
    front-end process's CPU time."""

    name: str
    wall_seconds: float
    answer_tokens: int
    steps: int = 0
    step_sequences: int = 0
    host_seconds: float = 0.0
    # The front-end's CPU when the same run is played back to it alone, no engine working (`core_tape`): the least
    # of `alone_plays`; NaN where it could not be (vLLM's in-process engine-core client).
    alone_seconds: float = math.nan
    alone_plays: tuple[float, ...] = ()  # the front-end's CPU in each play

    @property
    def tokens_per_second(self) -> float:
        return self.answer_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def sequences_per_step(self) -> float:
        return self.step_sequences / self.steps if self.steps else 0.0

    @property
    def host_us_per_token(self) -> float:
        return host_figures(self.host_seconds, self.answer_tokens)[0]

    @property
    def host_tokens_per_core_second(self) -> float:
        return host_figures(self.host_seconds, self.answer_tokens)[1]

    @property
    def alone_us_per_token(self) -> float:
        return host_figures(self.alone_seconds, self.answer_tokens)[0]

    @property
    def host_ms_per_step(self) -> float:
        return self.host_seconds / self.steps * 1e3 if self.steps else math.nan


def host_figures(cpu_seconds: float, answer_tokens: int) -> tuple[float, float]:
    """The front-end's CPU µs per answer token, and the answer tokens per second one such core could feed."""
    if answer_tokens <= 0 or math.isnan(cpu_seconds):  # no token, or no figure (a run not played back)
        return math.nan, math.nan
    us_per_token = cpu_seconds / answer_tokens * 1e6
    return us_per_token, 1e6 / us_per_token if us_per_token > 0 else math.inf


def host_cpu_seconds() -> float:
    """CPU time this process has spent so far, all its threads, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class BenchResult:
    """The median of each measurement over the repeats, and the ratios the bench reports."""

    runs: dict[str, list[Measurement]] = field(default_factory=lambda: {name: [] for name in MEASUREMENTS})

    def median(self, name: str, attribute: str) -> float:
        return statistics.median(getattr(m, attribute) for m in self.runs[name])

    @property
    def measured(self) -> tuple[str, ...]:
        """The measurements that ran (the reference is optional)."""
        return tuple(name for name in MEASUREMENTS if self.runs.get(name))

    def ratios(self) -> dict[str, float]:
        """The bench line's ratios; those against the reference only when it ran."""
        with_reference = "reference" in self.measured
        values = ratios(
            ssogen_tps=self.median("ssogen", "tokens_per_second"),
            raw_tps=self.median("raw", "tokens_per_second"),
            reference_tps=self.median("reference", "tokens_per_second") if with_reference else 0.0,
            ssogen_steps=self.median("ssogen", "steps"),
            raw_steps=self.median("raw", "steps"),
            ssogen_sequences_per_step=self.median("ssogen", "sequences_per_step"),
            raw_sequences_per_step=self.median("raw", "sequences_per_step"),
        )
        if not with_reference:
            del values["vs_reference"], values["raw_vs_reference"]
        return values

    def host(self) -> dict[str, float]:
        """The bench line's host figures: ssogen's and raw's front-end CPU µs per answer token (medians over the
        repeats), their ratio, and the tokens per second one core could feed at each."""
        ssogen = self.median("ssogen", "host_us_per_token")
        raw = self.median("raw", "host_us_per_token")
        alone = self.median("ssogen", "alone_us_per_token")
        raw_alone = self.median("raw", "alone_us_per_token")
        return {
            "host_us_per_token": ssogen,
            "raw_host_us_per_token": raw,
            "host_vs_raw": _safe_div(ssogen, raw),
            "host_tokens_per_core_s": _safe_div(1e6, ssogen),
            "raw_host_tokens_per_core_s": _safe_div(1e6, raw),
            "alone_us_per_token": alone,
            "raw_alone_us_per_token": raw_alone,
            "alone_vs_raw": _safe_div(alone, raw_alone),
            "alone_tokens_per_core_s": _safe_div(1e6, alone),
        }


def _plays(m: Measurement) -> str:
    """Each play's µs per answer token, so the spread the least was taken from shows."""
    if not m.alone_plays or m.answer_tokens <= 0:
        return ""
    return ", plays " + " ".join(f"{host_figures(s, m.answer_tokens)[0]:.1f}" for s in m.alone_plays)


def _safe_div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def ratios(
    *,
    ssogen_tps: float,
    raw_tps: float,
    reference_tps: float,
    ssogen_steps: float,
    raw_steps: float,
    ssogen_sequences_per_step: float,
    raw_sequences_per_step: float,
) -> dict[str, float]:
    """The bench line's figures from measured throughputs and step counts."""
    return {
        "vs_raw": _safe_div(ssogen_tps, raw_tps),
        "vs_reference": _safe_div(ssogen_tps, reference_tps),
        "raw_vs_reference": _safe_div(raw_tps, reference_tps),
        "steps_vs_raw": _safe_div(ssogen_steps, raw_steps),
        "occupancy": _safe_div(ssogen_sequences_per_step, raw_sequences_per_step),
    }


def bench_line(values: dict[str, float], extra: dict[str, object] | None = None) -> str:
    """``bench: k=v …`` with the headline ratios first (figures of 1000 or more without decimals)."""
    parts = [f"{k}={v:.0f}" if abs(v) >= 1000 else f"{k}={v:.3f}" for k, v in values.items()]
    parts += [f"{k}={v}" for k, v in (extra or {}).items()]
    return "bench: " + " ".join(parts)


Answers = list[tuple[Request, Completion]]  # every y+ / y- / y° request of a run and what it produced


class _Counter:
    """The engine's step counters, the wall time and this process's CPU time from its creation on."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.steps = engine.stats.steps
        self.sequences = engine.stats.step_sequences
        self.host = host_cpu_seconds()
        self.started = time.perf_counter()

    def measurement(self, name: str, answer_tokens: int) -> Measurement:
        wall = time.perf_counter() - self.started
        stats = self.engine.stats
        return Measurement(
            name,
            wall,
            answer_tokens,
            steps=stats.steps - self.steps,
            step_sequences=stats.step_sequences - self.sequences,
            host_seconds=host_cpu_seconds() - self.host,
        )


def measure_ssogen(engine: Engine, setup: Setup, chunk_size: int, reproducible: bool) -> tuple[Measurement, Answers]:
    """The build path over every query, in chunks; returns the answers it sampled (for raw to replay)."""

    def run() -> Answers:
        answers: Answers = []
        for _ in flow_chunks(
            engine,
            setup,
            setup.plan.queries.queries,
            chunk_size=chunk_size,
            reproducible=reproducible,
            trace=lambda _pid, _role, request, completion: answers.append((request, completion)),
        ):
            pass
        return answers

    return _measured(engine, "ssogen", run, lambda answers: _answer_tokens((c, c) for _, c in answers))


Result = TypeVar("Result")


def _measured(
    engine: Engine, name: str, run: Callable[[], Result], answer_tokens: Callable[[Result], int]
) -> tuple[Measurement, Result]:
    """Time `run` on the engine, recording what the engine core sent; then play that back to the front-end alone
    `PLAYS` times and time its CPU in each (`core_tape`). Each played-back run must send what the recorded one sent
    and give back every answer it did; where one does not, the alone figure is left out (NaN) with a warning."""
    counter = _Counter(engine)
    with recording(engine) if can_tape(engine) else contextlib.nullcontext() as tape:
        result = run()
    measurement = counter.measurement(name, answer_tokens(result))
    if tape is None:
        return measurement, result
    measurement.host_seconds -= tape.encode_seconds
    plays: list[float] = []
    try:
        for _ in range(PLAYS):
            started = host_cpu_seconds()
            with playing(engine, tape):
                played = run()
            plays.append(host_cpu_seconds() - started)
            if played != result:
                raise TapeDiverged("it gave other answers than the engine's run")
    except TapeDiverged as exc:
        # The run's own figures stand; only the played-back one is left out, and said so.
        engine.abort_all()  # what the played-back run had added, which never reached the engine core
        logger.warning("the %s run could not be played back to the front-end alone (%s): no 'alone' figure", name, exc)
        return measurement, result
    measurement.alone_plays = tuple(plays)
    measurement.alone_seconds = min(plays)
    return measurement, result


def _answer_tokens(runs: Iterable[tuple[Completion, Completion]]) -> int:
    """Tokens of the answers that were written to their end: (run's completion, build's answer) pairs, leaving
    out those the build abandoned, so ssogen and raw count the same answers."""
    return sum(len(done.token_ids) for done, answer in runs if answer.finish_reason != "abandoned")


def replay(request: Request, completion: Completion) -> Request:
    """The same prompt and seed, generating exactly the answer's length and asking for nothing else.

    An answer abandoned because its query was dropped is replayed to the tokens the engine had generated for
    it by then: the build's engine did that work (and held a slot for it), so the one-call stream does it too.
    """
    return replace(
        request,
        max_tokens=max(1, len(completion.token_ids), completion.abandoned_tokens),
        ignore_eos=True,
        stop=(),
        logprobs=False,
        repetition=None,
        loop_watch=None,
        vllm_text=True,  # plain vLLM writes the text as it goes
    )


def measure_raw(engine: Engine, answers: Answers) -> Measurement:
    """One generate call over the build's answers, each replayed to its exact length.

    Its answer tokens leave out the replays of abandoned answers, as the build's do: the two count the same
    answers, so their throughputs compare the time each took to write them.
    """
    requests = [replay(request, completion) for request, completion in answers]
    builds = [answer for _, answer in answers]
    measurement, _ = _measured(
        engine,
        "raw",
        lambda: engine.generate(requests, desc="raw"),
        lambda done: _answer_tokens(zip(done, builds, strict=True)),
    )
    return measurement


def measure_reference(engine: Engine, plan: Plan) -> Measurement:
    """Sequential batches of 16: one sampled selection call, then one call per role; no scoring."""
    config = replace(
        plan.config,
        feature_selection="sampled",
        generate_principles=False,
        repetition_max_pattern=0,
        loop_compression=0.0,
    )
    setup = Setup(replace(plan, config=config), engine.max_model_len)
    queries = plan.queries.queries
    answer_tokens = 0
    counter = _Counter(engine)
    for start in range(0, len(queries), REFERENCE_BATCH):
        stages = [query_stages(setup, q) for q in queries[start : start + REFERENCE_BATCH]]
        asked = [_send(s, None) for s in stages]
        selecting = [i for i, a in enumerate(asked) if a is not None and "select" in a]
        chosen = engine.generate([asked[i]["select"] for i in selecting], desc="reference select")  # type: ignore[index]
        for i, completion in zip(selecting, chosen, strict=True):
            asked[i] = _send(stages[i], {"select": completion})
        for role in ROLES:
            # The reference asks for the answers only (no log-probabilities), their text written by vLLM.
            batch = [replace(a[role], logprobs=False, vllm_text=True) for a in asked if a is not None and role in a]
            answer_tokens += sum(len(c.token_ids) for c in engine.generate(batch, desc=f"reference {role}"))
        for s in stages:
            s.close()
    return counter.measurement("reference", answer_tokens)


def _send(stages: Any, got: dict[str, Any] | None) -> dict[str, Any] | None:
    """A query's next requests, or None once it has finished (e.g. dropped as too long)."""
    try:
        return stages.send(got)
    except StopIteration:
        return None


def run_bench(
    engine: Engine,
    plan: Plan,
    repeats: int,
    *,
    reproducible: bool = False,
    reference: bool = True,
    log: Callable[[str], Any] = print,
) -> BenchResult:
    """Warm the engine, then measure ssogen, raw and (unless `reference` is False) the reference `repeats` times
    each, interleaved."""
    setup = prepare(engine, plan)
    warm = replace(plan, queries=replace(plan.queries, queries=plan.queries.queries[:2]))
    for _ in flow_chunks(engine, replace(setup, plan=warm), warm.queries.queries, chunk_size=2):
        pass  # compiles / allocates every code path once before timing
    result = BenchResult()
    chunk_size = plan.config.chunk_size
    for repeat in range(1, repeats + 1):
        # Each measurement starts with an empty prefix cache, so none reuses the prompts another computed.
        engine.reset_prefix_cache()
        ssogen, answers = measure_ssogen(engine, setup, chunk_size, reproducible)
        engine.reset_prefix_cache()
        raw = measure_raw(engine, answers)
        measured = [ssogen, raw]
        if reference:
            engine.reset_prefix_cache()
            measured.append(measure_reference(engine, plan))
        for m in measured:
            result.runs[m.name].append(m)
            log(
                f"repeat {repeat} {m.name:>9}: wall {m.wall_seconds:7.2f}s  answer tokens {m.answer_tokens:6d}  "
                f"{m.tokens_per_second:7.1f} tok/s  steps {m.steps:6d}  sequences/step {m.sequences_per_step:6.1f}  "
                f"host {m.host_us_per_token:6.1f} us/token ({m.host_tokens_per_core_second:6.0f} tok/s per core, "
                f"{m.host_ms_per_step:5.2f} ms/step; alone {m.alone_us_per_token:6.1f} us/token{_plays(m)})"
            )
    return result
