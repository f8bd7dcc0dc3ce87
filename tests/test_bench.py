"""`ssogen bench` and `ssogen build --dry-run`: the arithmetic, and tiny real runs that print parseable lines."""

from __future__ import annotations

import json
import re

import pytest

from ssogen.bench import BenchResult, Measurement, bench_line, ratios
from tests.conftest import run_cli


def test_ratios_from_known_timings():
    values = ratios(
        ssogen_tps=90.0,
        raw_tps=100.0,
        reference_tps=50.0,
        scoring_seconds=3.0,
        generation_seconds=30.0,
        non_engine_seconds=2.0,
        ssogen_wall=40.0,
        serial_tps=80.0,
    )
    assert values == pytest.approx(
        {
            "vs_raw": 0.9,
            "vs_reference": 1.8,
            "raw_vs_reference": 2.0,
            "scoring_share": 0.1,
            "non_engine_share": 0.05,
            "serial_vs_raw": 0.8,
            "overlap_gain": 90.0 / 80.0,
        }
    )


def test_measurement_throughput_and_non_engine_time():
    m = Measurement("ssogen", wall_seconds=10.0, answer_tokens=500, generate_seconds=7.0, score_seconds=1.5)
    assert m.tokens_per_second == 50.0
    assert m.non_engine_seconds == pytest.approx(1.5)


def test_medians_over_repeats_feed_the_ratios():
    result = BenchResult(
        runs={
            "ssogen": [
                Measurement("ssogen", w, 100, generate_seconds=w / 2, score_seconds=1.0) for w in (1.0, 2.0, 4.0)
            ],
            "raw": [Measurement("raw", w, 100, generate_seconds=w) for w in (1.0, 1.0, 9.0)],
            "reference": [Measurement("reference", w, 100) for w in (2.0, 4.0, 5.0)],
            "serial": [Measurement("serial", w, 100) for w in (2.5, 2.5, 3.0)],
        }
    )
    values = result.ratios()
    assert values["vs_raw"] == pytest.approx(50.0 / 100.0)  # medians: ssogen 50 tok/s, raw 100 tok/s
    assert values["vs_reference"] == pytest.approx(50.0 / 25.0)
    assert values["scoring_share"] == pytest.approx(1.0 / 1.0)
    assert values["serial_vs_raw"] == pytest.approx(40.0 / 100.0)  # serial median 2.5 s for 100 tokens
    assert values["overlap_gain"] == pytest.approx(2.5 / 2.0)  # serial wall over ssogen wall


def test_bench_without_a_serial_run_reports_nan_for_its_ratios():
    result = BenchResult(
        runs={name: [Measurement(name, 1.0, 100, generate_seconds=1.0)] for name in ("ssogen", "raw", "reference")}
    )
    values = result.ratios()
    assert values["vs_raw"] == pytest.approx(1.0)
    assert values["serial_vs_raw"] != values["serial_vs_raw"]  # nan


def test_bench_line_starts_with_the_headline_ratios():
    line = bench_line({"vs_raw": 0.95, "vs_reference": 1.7}, {"queries": 24})
    assert line == "bench: vs_raw=0.950 vs_reference=1.700 queries=24"


def test_tiny_bench_run_prints_a_parseable_bench_line(shared_data):
    result = run_cli(
        "bench", "--queries", str(shared_data / "seed_tasks.jsonl"), "--limit", "2", "--max-new-tokens", "8",
        "--enforce-eager", "--max-model-len", "2048",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("bench: ")
    pairs = dict(item.split("=", 1) for item in last.removeprefix("bench: ").split())
    for key in ("vs_raw", "vs_reference", "raw_vs_reference", "scoring_share", "serial_vs_raw", "overlap_gain"):
        assert float(pairs[key]) > 0, (key, last)
    stage_lines = [line for line in result.stdout.splitlines() if "stages:" in line]
    assert stage_lines and all(f"{stage} " in stage_lines[0] for stage in ("select", "sample", "score"))
    assert pairs["queries"] == "2"


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
        "import sys; from ssogen.config import BuildConfig; from ssogen.pipeline import dry_run; "
        "s = dry_run(BuildConfig(limit=5)); print(s.queries, 'vllm' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.split() == ["5", "False"]
