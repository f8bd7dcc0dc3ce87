"""`ssogen bench` and `ssogen build --dry-run`: the arithmetic, and tiny real runs that print parseable lines."""

from __future__ import annotations

import json
import math
import re

import pytest

from ssogen.generation.bench import BenchResult, Measurement, bench_line, host_figures, ratios
from tests.conftest import QUERIES, run_cli


def test_ratios_from_known_throughputs_and_step_counts():
    values = ratios(
        ssogen_tps=90.0,
        raw_tps=100.0,
        reference_tps=50.0,
        ssogen_steps=330,
        raw_steps=300,
        ssogen_sequences_per_step=180.0,
        raw_sequences_per_step=200.0,
    )
    assert values == pytest.approx(
        {"vs_raw": 0.9, "vs_reference": 1.8, "raw_vs_reference": 2.0, "steps_vs_raw": 1.1, "occupancy": 0.9}
    )


def test_measurement_throughput_and_sequences_per_step():
    m = Measurement("ssogen", wall_seconds=10.0, answer_tokens=500, steps=40, step_sequences=1000)
    assert m.tokens_per_second == 50.0
    assert m.sequences_per_step == 25.0
    assert Measurement("raw", 1.0, 0).sequences_per_step == 0.0  # no step: no division by zero


def test_medians_over_repeats_feed_the_ratios():
    result = BenchResult(
        runs={
            "ssogen": [
                Measurement("ssogen", w, 100, steps=s, step_sequences=s * 10) for w, s in ((1, 50), (2, 60), (4, 99))
            ],
            "raw": [Measurement("raw", w, 100, steps=s, step_sequences=s * 20) for w, s in ((1, 30), (1, 40), (9, 41))],
            "reference": [Measurement("reference", w, 100) for w in (2.0, 4.0, 5.0)],
        }
    )
    values = result.ratios()
    assert values["vs_raw"] == pytest.approx(50.0 / 100.0)  # medians: ssogen 50 tok/s, raw 100 tok/s
    assert values["vs_reference"] == pytest.approx(50.0 / 25.0)
    assert values["steps_vs_raw"] == pytest.approx(60 / 40)
    assert values["occupancy"] == pytest.approx(10 / 20)


def test_host_figures_are_cpu_microseconds_per_answer_token_and_the_tokens_one_core_could_feed():
    # The first measurement: 0.65 s of front-end CPU for 12,922 answer tokens.
    us, rate = host_figures(0.65, 12_922)
    assert us == pytest.approx(50.30, abs=0.01) and rate == pytest.approx(19_880, abs=1)
    assert host_figures(0.5, 20_000) == pytest.approx((25.0, 40_000.0))
    assert all(math.isnan(v) for v in host_figures(1.0, 0))  # no token: no figure, no division by zero
    m = Measurement("raw", 10.0, 4_000, steps=200, step_sequences=4_000, host_seconds=0.07)
    assert (m.host_us_per_token, m.host_tokens_per_core_second) == pytest.approx((17.5, 1e6 / 17.5))
    assert m.host_ms_per_step == pytest.approx(0.35)


def test_host_figures_on_the_bench_line_are_medians_over_repeats_and_their_ratio():
    result = BenchResult(
        runs={
            "ssogen": [
                Measurement("ssogen", 1.0, 1_000, host_seconds=s, alone_seconds=s / 4) for s in (0.020, 0.030, 0.090)
            ],
            "raw": [Measurement("raw", 1.0, 2_000, host_seconds=s, alone_seconds=s / 2) for s in (0.030, 0.040, 0.010)],
            "reference": [],
        }
    )
    assert result.host() == pytest.approx(
        {
            "host_us_per_token": 30.0,  # median of 20, 30, 90
            "raw_host_us_per_token": 15.0,  # median of 15, 20, 5
            "host_vs_raw": 2.0,
            "host_tokens_per_core_s": 1e6 / 30,
            "raw_host_tokens_per_core_s": 1e6 / 15,
            # The same runs played back to the front-end alone (no engine working).
            "alone_us_per_token": 7.5,
            "raw_alone_us_per_token": 7.5,
            "alone_vs_raw": 1.0,
            "alone_tokens_per_core_s": 1e6 / 7.5,
        }
    )
    line = bench_line(result.ratios() | result.host())
    assert "host_us_per_token=30.000 raw_host_us_per_token=15.000 host_vs_raw=2.000" in line
    assert "host_tokens_per_core_s=33333 raw_host_tokens_per_core_s=66667 alone_us_per_token=7.500" in line
    # A run that could not be played back (vLLM's in-process client) has no figure, and no division by zero.
    assert math.isnan(Measurement("raw", 1.0, 100, host_seconds=0.1).alone_us_per_token)


def test_without_a_reference_run_the_line_has_no_reference_ratios():
    result = BenchResult(
        runs={
            "ssogen": [Measurement("ssogen", 2.0, 100, steps=12, step_sequences=120)],
            "raw": [Measurement("raw", 1.0, 100, steps=10, step_sequences=110)],
            "reference": [],
        }
    )
    assert result.measured == ("ssogen", "raw")
    assert result.ratios() == pytest.approx({"vs_raw": 0.5, "steps_vs_raw": 1.2, "occupancy": 10 / 11})


def test_bench_with_no_reference_measures_only_ssogen_and_raw_on_the_real_engine(engine, tmp_path):
    from ssogen.config import BuildConfig
    from ssogen.generation.bench import PLAYS, run_bench
    from ssogen.generation.plan import plan_build

    config = BuildConfig(
        queries=str(QUERIES), limit=3, max_new_tokens=8, chunk_size=2, max_model_len=2048,
        output=tmp_path / "o",
    )  # fmt: skip
    lines: list[str] = []
    result = run_bench(engine, plan_build(config), 1, reference=False, log=lines.append)
    assert result.measured == ("ssogen", "raw") and result.runs["reference"] == []
    assert [line.split(":")[0].split()[-1] for line in lines] == ["ssogen", "raw"]
    assert set(result.ratios()) == {"vs_raw", "steps_vs_raw", "occupancy"}
    assert result.median("raw", "answer_tokens") == result.median("ssogen", "answer_tokens") > 0
    # Each run's front-end CPU time was read: sending, reading and scoring its answers cost some; so was the
    # same run's, played back to the front-end alone (NaN, failing this, had it not given the same answers).
    assert all(m.host_seconds > 0 and m.alone_seconds > 0 for name in ("ssogen", "raw") for m in result.runs[name])
    # Played back PLAYS times each; the figure is the least, and the run's line shows every play.
    for name in ("ssogen", "raw"):
        (m,) = result.runs[name]
        assert len(m.alone_plays) == PLAYS and m.alone_seconds == min(m.alone_plays)
    assert all(line.count(", plays ") == 1 and len(line.split(", plays ")[1].split()) == PLAYS for line in lines)


def test_a_run_that_cannot_be_played_back_keeps_its_own_figures_and_has_no_alone_figure(engine, tokenizer, caplog):
    from ssogen.generation.bench import _measured
    from ssogen.generation.engine import Request

    seeds = iter([1, 2])  # the second run, the one played back, asks for another seed

    def run():
        return engine.generate([Request(tokenizer.encode("Hello there"), next(seeds), 4)], desc="diverging")

    with caplog.at_level("WARNING", logger="ssogen.generation.bench"):
        measurement, done = _measured(engine, "ssogen", run, lambda done: sum(len(c.token_ids) for c in done))
    assert measurement.answer_tokens == len(done[0].token_ids) > 0 and measurement.host_seconds > 0
    assert math.isnan(measurement.alone_seconds) and math.isnan(measurement.alone_us_per_token)
    assert "could not be played back to the front-end alone" in caplog.text and "differs" in caplog.text
    assert engine.unfinished_requests == 0  # the played-back run's request was taken back


def test_raw_replays_each_answer_to_its_exact_length_and_nothing_else():
    from ssogen.generation.bench import replay
    from ssogen.generation.engine import Completion, LoopWatch, Repetition, Request

    request = Request(
        [1, 2, 3], 7, 256, stop=("###",), logprobs=True, repetition=Repetition(1, 32, 8), loop_watch=LoopWatch(0.15)
    )
    replayed = replay(request, Completion("abc", [5, 6, 7, 8], "stop"))
    assert (replayed.max_tokens, replayed.ignore_eos, replayed.logprobs) == (4, True, False)
    assert replayed.stop == () and replayed.repetition is None and replayed.loop_watch is None
    assert (replayed.prompt_ids, replayed.seed, replayed.temperature) == ([1, 2, 3], 7, request.temperature)
    # An answer abandoned after 37 tokens (its text unread) costs raw those 37 tokens too; one abandoned
    # before its first token still asks for one.
    assert replay(request, Completion("", [], "abandoned", abandoned_tokens=37)).max_tokens == 37
    assert replay(request, Completion("", [], "abandoned")).max_tokens == 1


def test_bench_line_starts_with_the_headline_ratios():
    line = bench_line({"vs_raw": 0.95, "vs_reference": 1.7}, {"queries": 24})
    assert line == "bench: vs_raw=0.950 vs_reference=1.700 queries=24"


@pytest.mark.engine  # `ssogen bench` in its own process
def test_tiny_bench_run_prints_a_parseable_bench_line():
    result = run_cli(
        "bench", "--queries", str(QUERIES), "--limit", "4", "--max-new-tokens", "8",
        "--chunk-size", "2", "--enforce-eager", "--max-model-len", "2048",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("bench: ")
    pairs = dict(item.split("=", 1) for item in last.removeprefix("bench: ").split())
    for key in ("vs_raw", "vs_reference", "raw_vs_reference", "steps_vs_raw", "occupancy"):
        assert float(pairs[key]) > 0, (key, last)
    # raw replays the same answers as one call: at least one step per token of the longest answer, and ssogen's
    # steps include its selection and scoring.
    assert float(pairs["steps_vs_raw"]) >= 1.0
    assert (pairs["queries"], pairs["chunk_size"], pairs["mode"]) == ("4", "2", "continuous")
    # The host's figures, ssogen's and raw's side by side, and the rate one core could feed at each.
    host, raw_host = float(pairs["host_us_per_token"]), float(pairs["raw_host_us_per_token"])
    assert host > 0 and raw_host > 0, last
    assert float(pairs["host_vs_raw"]) == pytest.approx(host / raw_host, rel=0.01)
    assert float(pairs["host_tokens_per_core_s"]) == pytest.approx(1e6 / host, rel=0.01)
    assert float(pairs["raw_host_tokens_per_core_s"]) == pytest.approx(1e6 / raw_host, rel=0.01)
    alone, raw_alone = float(pairs["alone_us_per_token"]), float(pairs["raw_alone_us_per_token"])
    assert alone > 0 and raw_alone > 0, last
    assert float(pairs["alone_vs_raw"]) == pytest.approx(alone / raw_alone, rel=0.01)
    per_run = [line for line in result.stdout.splitlines() if line.startswith("repeat 1 ")]
    assert len(per_run) == 3 and all(re.search(r"host +[\d.]+ us/token", line) for line in per_run), per_run
    assert "WARNING" not in result.stderr  # vLLM's own output went to the bench's engine log
    assert "leaked" not in result.stderr  # nothing left frozen at exit for Triton's bindings to report


@pytest.mark.slow
def test_dry_run_renders_every_prompt_without_an_engine_and_writes_nothing(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(2500)))
    out = tmp_path / "out"
    result = run_cli("build", "--dry-run", "--queries", str(path), "--chunk-size", "500", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"dry-run: queries=(\d+) prompts=(\d+) prompt_tokens=(\d+) queries_per_s=([\d.]+) peak_rss_mib=(\d+)", line
    )
    assert match, line
    assert (int(match[1]), int(match[2])) == (2500, 10000)
    assert int(match[3]) > 2500 * 3 * 20  # x+, x- and x are tokenised, each well over 20 tokens
    assert "1000 queries rendered" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_dry_run_never_imports_vllm(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from ssogen.config import BuildConfig; from ssogen.generation.pipeline import dry_run; "
        "s = dry_run(BuildConfig(limit=5)); print(s.queries, 'vllm' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.split() == ["5", "False"]
