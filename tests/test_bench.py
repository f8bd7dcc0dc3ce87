"""`ssogen bench` and `ssogen build --dry-run`: the arithmetic, and tiny real runs that print parseable lines."""

from __future__ import annotations

import json
import re

import pytest

from ssogen.generation.bench import BenchResult, Measurement, bench_line, ratios
from tests.conftest import run_cli


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


def test_bench_with_no_reference_measures_only_ssogen_and_raw_on_the_real_engine(engine, shared_data, tmp_path):
    from ssogen.config import BuildConfig
    from ssogen.generation.bench import run_bench
    from ssogen.generation.plan import plan_build

    config = BuildConfig(
        queries=str(shared_data / "seed_tasks.jsonl"), limit=3, max_new_tokens=8, chunk_size=2, max_model_len=2048,
        output=tmp_path / "o",
    )  # fmt: skip
    lines: list[str] = []
    result = run_bench(engine, plan_build(config), 1, reference=False, log=lines.append)
    assert result.measured == ("ssogen", "raw") and result.runs["reference"] == []
    assert [line.split(":")[0].split()[-1] for line in lines] == ["ssogen", "raw"]
    assert set(result.ratios()) == {"vs_raw", "steps_vs_raw", "occupancy"}
    assert result.median("raw", "answer_tokens") == result.median("ssogen", "answer_tokens") > 0


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


def test_tiny_bench_run_prints_a_parseable_bench_line(shared_data):
    result = run_cli(
        "bench", "--queries", str(shared_data / "seed_tasks.jsonl"), "--limit", "4", "--max-new-tokens", "8",
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
    assert "WARNING" not in result.stderr  # vLLM's own output went to the bench's engine log


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


def test_dry_run_never_imports_vllm(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from ssogen.config import BuildConfig; from ssogen.generation.pipeline import dry_run; "
        "s = dry_run(BuildConfig(limit=5)); print(s.queries, 'vllm' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.split() == ["5", "False"]
