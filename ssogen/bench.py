"""`ssogen bench`: how close the build path runs to the engine's own ceiling, measured side by side.

Owns four measurements in one process on one warmed engine, over the same queries and sampling settings:
    ssogen     the real build path for one chunk (feature selection, contrastive prompts, sampling,
               scoring, W), without writing or publishing;
    raw        the ceiling: one engine call generating exactly the y+/y-/y° answers the ssogen run sampled,
               and nothing else (no log-probabilities, no scoring);
    reference  the paper authors' procedure re-created: sequential batches of 16 queries, one
               feature-selection call, then one engine call per role per batch, no scoring;
    serial     ssogen's own engine work run one stage at a time with nothing overlapped: the selection
               call, the sampling call (y° with its log-probabilities) and the scoring of y+ and y- by
               prefill. It shows what the method's extra work costs on this engine, and what the build
               path costs beyond it (or saves, where its engine calls overlap).
Throughput counts the answer tokens (y+, y-, y°) each run generated, over its wall time; the ratios are
the point, absolute seconds mean little on a shared machine. Scoring is its own engine call after sampling,
so ``scoring_share`` is its time over the generation time. The last line printed is
``bench: vs_raw=… vs_reference=… raw_vs_reference=… scoring_share=… …``; ``serial_vs_raw`` is the
vs_raw the stages would reach with no overlap, and ``overlap_gain`` the serial wall time over ssogen's.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, replace

from ssogen.chunk import SAMPLE_CALL, prepare_chunk, run_chunk, sampling_requests
from ssogen.engine import Engine, Request
from ssogen.pipeline import Plan
from ssogen.steer import ROLES

REFERENCE_BATCH = 16


@dataclass
class Measurement:
    """One timed run: its wall time, the answer tokens it generated, and where the engine time went."""

    name: str
    wall_seconds: float
    answer_tokens: int
    generate_seconds: float = 0.0
    score_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.answer_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def non_engine_seconds(self) -> float:
        return max(0.0, self.wall_seconds - self.generate_seconds - self.score_seconds)


@dataclass
class BenchResult:
    """The median of each measurement over the repeats, and the ratios the bench reports."""

    runs: dict[str, list[Measurement]] = field(default_factory=dict)

    def median(self, name: str, attribute: str) -> float:
        return statistics.median(getattr(m, attribute) for m in self.runs[name])

    def ratios(self) -> dict[str, float]:
        serial = "serial" in self.runs
        return ratios(
            ssogen_tps=self.median("ssogen", "tokens_per_second"),
            raw_tps=self.median("raw", "tokens_per_second"),
            reference_tps=self.median("reference", "tokens_per_second"),
            scoring_seconds=self.median("ssogen", "score_seconds"),
            generation_seconds=self.median("ssogen", "generate_seconds"),
            non_engine_seconds=self.median("ssogen", "non_engine_seconds"),
            ssogen_wall=self.median("ssogen", "wall_seconds"),
            serial_tps=self.median("serial", "tokens_per_second") if serial else float("nan"),
        )


def _safe_div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def ratios(
    *,
    ssogen_tps: float,
    raw_tps: float,
    reference_tps: float,
    scoring_seconds: float,
    generation_seconds: float,
    non_engine_seconds: float,
    ssogen_wall: float,
    serial_tps: float = float("nan"),
) -> dict[str, float]:
    """The bench line's figures from measured throughputs and times."""
    return {
        "vs_raw": _safe_div(ssogen_tps, raw_tps),
        "vs_reference": _safe_div(ssogen_tps, reference_tps),
        "raw_vs_reference": _safe_div(raw_tps, reference_tps),
        "scoring_share": _safe_div(scoring_seconds, generation_seconds),
        "non_engine_share": _safe_div(non_engine_seconds, ssogen_wall),
        "serial_vs_raw": _safe_div(serial_tps, raw_tps),
        # Same answer tokens in both runs, so the throughput ratio is the wall-time ratio serial / ssogen.
        "overlap_gain": _safe_div(ssogen_tps, serial_tps),
    }


def bench_line(values: dict[str, float], extra: dict[str, object] | None = None) -> str:
    """``bench: k=v …`` with the four headline ratios first."""
    parts = [f"{k}={v:.3f}" for k, v in values.items()]
    parts += [f"{k}={v}" for k, v in (extra or {}).items()]
    return "bench: " + " ".join(parts)


def _answer_tokens(engine: Engine, before: int) -> int:
    return engine.stats.generated_tokens - before


Trace = list[tuple[str, str, Request]]  # (prompt_id, role, request) of each y+ / y- / y° the build made


def measure_ssogen(engine: Engine, plan: Plan) -> tuple[Measurement, Trace]:
    """The build path over all queries as one chunk; returns the sampling requests it made."""
    traced: Trace = []
    gen0, score0 = engine.stats.generate_seconds, engine.stats.score_seconds
    answers0 = engine.stats.tokens_by_call[SAMPLE_CALL]
    started = time.perf_counter()
    run_chunk(engine, plan, plan.queries.queries, trace=traced)
    wall = time.perf_counter() - started
    answer_tokens = engine.stats.tokens_by_call[SAMPLE_CALL] - answers0
    return (
        Measurement(
            "ssogen",
            wall,
            answer_tokens,
            generate_seconds=engine.stats.generate_seconds - gen0,
            score_seconds=engine.stats.score_seconds - score0,
        ),
        traced,
    )


def measure_raw(engine: Engine, traced: Trace) -> Measurement:
    """One generate call over the build's sampling requests, asking for nothing but the answers."""
    before = engine.stats.generated_tokens
    started = time.perf_counter()
    # y°'s log-probabilities are how the build scores y°: scoring work, so not part of the ceiling.
    engine.generate([replace(request, logprobs=False) for _, _, request in traced], desc="raw")
    wall = time.perf_counter() - started
    return Measurement("raw", wall, _answer_tokens(engine, before), generate_seconds=wall)


def measure_serial(engine: Engine, plan: Plan, traced: Trace) -> tuple[Measurement, dict[str, float]]:
    """The build's engine work one stage at a time: select, sample (as the build asks), score y+ and y-.

    Each stage starts from an empty prefix cache except scoring, which finds x cached as the build does
    (there y° is sampled under x before its siblings are scored); caching x is not timed.
    """
    queries = plan.queries.queries
    engine.reset_prefix_cache()
    started = time.perf_counter()
    prepare_chunk(engine, plan, queries)
    select = time.perf_counter() - started

    engine.reset_prefix_cache()
    before = engine.stats.generated_tokens
    started = time.perf_counter()
    answers = engine.generate([request for _, _, request in traced], desc="serial sample")
    sample = time.perf_counter() - started
    answer_tokens = _answer_tokens(engine, before)

    bare = {pid: request for pid, role, request in traced if role == "original"}
    steered = [
        (bare[pid].prompt_ids, answer.token_ids)
        for (pid, role, _), answer in zip(traced, answers, strict=True)
        if role != "original"
    ]
    engine.reset_prefix_cache()
    engine.generate([replace(request, max_tokens=1, logprobs=False) for request in bare.values()], desc="cache x")
    started = time.perf_counter()
    engine.score(steered, desc="serial score")
    score = time.perf_counter() - started

    stages = {"select": select, "sample": sample, "score": score}
    wall = select + sample + score
    return Measurement("serial", wall, answer_tokens, generate_seconds=select + sample, score_seconds=score), stages


def measure_reference(engine: Engine, plan: Plan) -> Measurement:
    """Sequential batches of 16: one selection call, then one call per role, no scoring."""
    queries = plan.queries.queries
    answer_tokens = 0
    gen0 = engine.stats.generate_seconds
    started = time.perf_counter()
    for start in range(0, len(queries), REFERENCE_BATCH):
        work = prepare_chunk(engine, plan, queries[start : start + REFERENCE_BATCH])
        requests = sampling_requests(plan, work)
        for role in ROLES:
            before = engine.stats.generated_tokens
            # The reference scores nothing, so it asks for no log-probs either.
            batch = [replace(r, logprobs=False) for (_, r_role, r) in requests if r_role == role]
            engine.generate(batch, desc=f"reference {role}")
            answer_tokens += _answer_tokens(engine, before)
    wall = time.perf_counter() - started
    return Measurement("reference", wall, answer_tokens, generate_seconds=engine.stats.generate_seconds - gen0)


def run_bench(engine: Engine, plan: Plan, repeats: int, log=print) -> BenchResult:
    """Warm the engine, then measure ssogen, raw, reference and serial `repeats` times each (interleaved)."""
    warm = plan.queries.queries[:2]
    run_chunk(engine, plan, warm)  # compiles / allocates every code path once before timing
    result = BenchResult(runs={"ssogen": [], "raw": [], "reference": [], "serial": []})
    for repeat in range(1, repeats + 1):
        # Each measurement starts with an empty prefix cache, so none reuses the prompts another computed.
        engine.reset_prefix_cache()
        ssogen, traced = measure_ssogen(engine, plan)
        engine.reset_prefix_cache()
        raw = measure_raw(engine, traced)
        engine.reset_prefix_cache()
        reference = measure_reference(engine, plan)
        serial, stages = measure_serial(engine, plan, traced)
        for m in (ssogen, raw, reference, serial):
            result.runs[m.name].append(m)
            log(
                f"repeat {repeat} {m.name:>9}: wall {m.wall_seconds:7.2f}s  answer tokens {m.answer_tokens:6d}  "
                f"{m.tokens_per_second:7.1f} tok/s  generate {m.generate_seconds:6.2f}s  "
                f"score {m.score_seconds:5.2f}s  non-engine {m.non_engine_seconds:5.2f}s"
            )
        log(f"repeat {repeat}    stages: " + "  ".join(f"{name} {seconds:6.2f}s" for name, seconds in stages.items()))
    return result
