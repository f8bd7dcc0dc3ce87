"""`ssogen doctor`: every check passes on the bundled model, a scoring that misreads the layout fails it and its
command, prompts or answers that differ from what the tokenizer or vLLM would give fail it, a model that cannot load
stops it in one line, and the supported vLLM range is the package's own."""

from __future__ import annotations

import contextlib
import tomllib

import pytest

from ssogen.config import BuildConfig
from tests.conftest import REPO, run_cli


def doctor_plan(tmp_path):
    from ssogen.generation.plan import plan_build

    config = BuildConfig(max_model_len=2048, max_new_tokens=48, output=tmp_path / "o")
    return plan_build(config, load_queries_now=False)


def test_the_supported_vllm_range_is_the_gpu_extra_the_package_declares():
    from packaging.requirements import Requirement

    from ssogen.generation.doctor import SUPPORTED_VLLM

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (vllm,) = [Requirement(r) for r in extras["gpu"] if Requirement(r).name == "vllm"]
    assert vllm.specifier == Requirement(f"vllm{SUPPORTED_VLLM}").specifier
    assert "0.32.0" in vllm.specifier and "0.34.0" not in vllm.specifier


def test_the_doctor_takes_the_model_and_engine_settings_and_nothing_a_build_alone_reads():
    from ssogen.cli import make_parser

    parse = make_parser().parse_args
    args = parse(["doctor", "--model", "m", "--block-size", "16", "--no-enable-prefix-caching"])
    assert (args.model, args.block_size, args.enable_prefix_caching) == ("m", 16, False)
    with pytest.raises(SystemExit):
        parse(["doctor", "--alpha", "0.5"])


def test_every_check_passes_on_the_bundled_model(engine, tmp_path):
    from ssogen.generation.doctor import TOLERANCES, run_doctor

    report = run_doctor(engine, doctor_plan(tmp_path))
    lines = "\n".join(f"{c.name}: {c.passed} {c.measured}" for c in report.checks)
    assert [c.name for c in report.checks] == list(TOLERANCES), lines  # one line per check, each with a tolerance
    assert report.failed == 0, lines
    assert report.line() == f"doctor: {len(TOLERANCES)} checks passed, 0 failed"


def test_a_scoring_that_misreads_the_layout_fails_the_doctor_and_its_command_exits_non_zero(
    engine, tmp_path, monkeypatch, capsys
):
    """Scoring as it read prompt log-probabilities before issue 28, fed what CUDA's V2 runner returns after a cache
    hit (the cached positions left out): the check that compares π̃ with and without the cache read fails."""
    import ssogen.generation.engine
    from ssogen import cli
    from ssogen.generation import doctor

    def old_read_under_v2(prompt_logprobs, prompt_len, response, num_cached_tokens):
        if num_cached_tokens >= prompt_len:
            return None
        v2 = [prompt_logprobs[0], *prompt_logprobs[num_cached_tokens + 1 :]]  # V1's list as V2 returns it
        return [v2[prompt_len + i][token].logprob for i, token in enumerate(response)]  # the old index

    monkeypatch.setattr(ssogen.generation.engine, "answer_logprobs", old_read_under_v2)
    monkeypatch.setattr(doctor, "start_engine", lambda *args: contextlib.nullcontext(engine))  # the session's
    # The slowest checks ran for real in the test above; here they pass as given, so the one failure is scoring's.
    for group, name in (("repeats", "--reproducible repeats"), ("loop", "forced loop stopped")):
        monkeypatch.setattr(doctor._Doctor, group, lambda self, name=name: [doctor.Check(name, True, "not run here")])
    status = cli._cmd_doctor(cli.make_parser().parse_args(["doctor", "--max-model-len", "2048"]))
    out = capsys.readouterr().out
    assert status == 1, out
    failed = [line for line in out.splitlines() if "failed" in line and "│" in line]
    assert any("cache read = fresh" in line for line in failed), out
    assert not any("not run here" in line for line in failed), out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("doctor: ") and not summary.endswith(" 0 failed"), summary
    assert engine.unfinished_requests == 0  # what the failed checks left in the engine was aborted


@pytest.mark.slow
def test_a_model_folder_that_cannot_load_stops_the_doctor_in_one_line_without_a_traceback(bundled_model, tmp_path):
    import shutil
    from pathlib import Path

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(Path(bundled_model.path) / "config.json", broken)  # a config, but no tokenizer and no weights
    result = run_cli("doctor", "--model", str(broken), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    said = [line for line in result.stderr.splitlines() if line.strip()]
    assert said == [said[0]] and said[0].startswith(f"error: --model: could not load a tokenizer from {broken}"), said
    assert "Traceback" not in result.stderr and "doctor:" not in result.stdout


def test_prompt_pieces_that_differ_from_their_whole_texts_fail_the_doctor(tmp_path):
    from ssogen.generation.doctor import _Doctor

    doctor = _Doctor(None, doctor_plan(tmp_path), lambda name: None)  # this check reads no engine
    (check,) = doctor.prompt_pieces()
    assert check.passed and check.measured == "on: 16 of 16 prompts equal to their whole text", check
    pieces = doctor.plan.chat.pieces
    pieces._to_verify = 0  # past the build's first prompts, a piece goes wrong
    pieces._piece_ids = lambda piece: (0,)
    (check,) = doctor.prompt_pieces()
    assert not check.passed and check.measured == "on: 0 of 16 prompts equal to their whole text", check


def test_answers_decoded_otherwise_than_vllm_writes_them_fail_the_doctor(engine, tmp_path, monkeypatch):
    from ssogen.generation.doctor import _Doctor

    doctor = _Doctor(engine, doctor_plan(tmp_path), lambda name: None)
    (check,) = doctor.answer_text()
    assert check.passed and check.measured.startswith("8 of 8 answers as vLLM wrote them ("), check
    assert " 0 cut" not in check.measured, check  # some answers were cut at their limit
    decode = engine.answer_text
    monkeypatch.setattr(decode, "_after", lambda head, context, ids: decode._decode(ids).upper())
    (check,) = doctor.answer_text()
    assert not check.passed and check.measured.startswith("0 of 8 answers"), check


def test_the_gpu_page_lists_every_check_the_doctor_runs():
    from ssogen.generation.doctor import TOLERANCES

    page = (REPO / "docs" / "gpu.md").read_text()
    missing = [name for name in TOLERANCES if f"\n| {name} |" not in page]
    assert not missing, missing
