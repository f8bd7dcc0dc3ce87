"""Never lose work: a killed or interrupted build resumes to the same folder; changed settings are refused."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pytest
import yaml

from ssogen import cli
from ssogen.errors import UsageError
from ssogen.generation import pipeline
from ssogen.generation.engine import Engine, EngineError
from ssogen.output.store import CHUNKS_DIR, SETTINGS_FILE, OutputFolder
from tests.conftest import BUILT_ARGS, QUERIES, REPO, error_lines, run_cli


def start_build(out: Path, queries: Path, *extra: str) -> subprocess.Popen:
    # Its own session, so the kill reaches vLLM's engine processes too (as a node pre-emption would).
    return subprocess.Popen(
        [sys.executable, "-m", "ssogen", "build", "--queries", str(queries), *BUILT_ARGS, *extra, "--output", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_chunks(out: Path, proc: subprocess.Popen, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / CHUNKS_DIR).glob("chunk-*.parquet"))) < count:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no chunk finished in time"
        time.sleep(0.05)


def table(folder: Path, config: str) -> pd.DataFrame:
    files = sorted((folder / "data" / config).glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]).sort_values("prompt_id").reset_index(drop=True)


def test_a_build_killed_then_out_of_disk_then_losing_its_engine_resumes_each_time_to_the_uninterrupted_result(
    tmp_path, built_folder
):
    """The faults of a long job on a shared machine, one after another on one folder, each followed by the same
    command: a kill -9 (pre-emption; a second build started meanwhile is refused), a full disk, the out-of-memory
    killer taking vLLM's worker. Every stop keeps whole chunks only and says how to go on; the last rerun ends where
    an uninterrupted build ends, with one row per query."""
    queries = QUERIES
    out = tmp_path / "out"
    chunks = out / CHUNKS_DIR

    killed = start_build(out, queries)
    wait_for_chunks(out, killed, 1)
    # Frozen at once: the second build below may take longer to start than a chunk takes (a busy 2-core machine),
    # and the faults that follow count on exactly one chunk on disk. It is killed, not resumed, after.
    os.killpg(killed.pid, signal.SIGSTOP)
    assert [c.name for c in chunks.glob("chunk-*.parquet")] == ["chunk-00000000.parquet"]
    # A second build on the folder meanwhile (a requeued job, a second terminal) is refused before it loads a model.
    second = run_cli("build", "--queries", str(queries), *BUILT_ARGS, "--output", str(out))
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"in use by another ssogen process: pid {killed.pid}" in second.stderr
    assert killed.poll() is None  # the first holds its lock on
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    whole = list(chunks.glob("chunk-*.parquet"))
    assert whole and not list(chunks.glob(".*"))  # only whole chunks, no partial file visible
    for chunk in whole:
        pd.read_parquet(chunk)  # every chunk on disk is readable

    full_disk = start_build(out, queries)
    wait_for_engine(out, full_disk)
    # A full disk or a quota from now on, for the build process only (its engine runs on).
    resource.prlimit(full_disk.pid, resource.RLIMIT_FSIZE, (2048, 2048))
    _, stderr = full_disk.communicate(timeout=600)
    assert full_disk.returncode == 1, stderr[-3000:]
    # The killed build's lock was released by the kernel; the next run says whose lock it took over.
    assert f"took over the lock of {out}, left by pid {killed.pid}" in stderr
    said = error_lines(stderr)
    assert said[0].startswith(f"error: cannot write {chunks}/chunk-00000001.parquet: file too large"), said
    assert said[1] == f"finished chunks are kept in {out}; run the same command again to resume"
    assert "Traceback" not in stderr
    assert list(chunks.glob("chunk-*.parquet")) == whole and not list(chunks.glob(".*"))

    engine_lost = start_build(out, queries)
    wait_for_chunks(out, engine_lost, 2)
    vllm_processes(engine_lost.pid)["VLLM::Worker"].kill()  # the engine core lives on: the hard case
    _, stderr = engine_lost.communicate(timeout=180)  # before the watchdog, the build hung here for ever
    assert engine_lost.returncode == 1, stderr[-3000:]
    # vLLM's processes log their own end around it; ssogen says what happened and how to go on.
    said = error_lines(stderr)
    assert said[0].startswith("error: the vLLM engine's process exited during"), said
    assert said[1] == f"finished chunks are kept in {out}; run the same command again to resume"
    kept = list(chunks.glob("chunk-*.parquet"))
    assert len(kept) == 2 and all(len(pd.read_parquet(c)) == 3 for c in kept)

    rerun = run_cli("build", "--queries", str(queries), *BUILT_ARGS, "--output", str(out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming: 6 of 9 queries already done" in rerun.stderr
    resumed, reference = table(out, "sso"), table(built_folder, "sso")
    assert resumed.prompt_id.is_unique and len(resumed) + len(_dropped(out)) == 9
    # Same seed, same chunk composition, every engine call released as one batch: the same answers and
    # the same π̃ and W, to the bit (README, Determinism).
    pd.testing.assert_frame_equal(resumed, reference, check_exact=True)
    assert front_matter(out) == front_matter(built_folder)  # the same configs, splits and sizes


def wait_for_engine(out: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until this run's engine is up (its start is logged once per run): limits set on the build process from
    then on do not reach vLLM's processes, which inherited the old ones."""
    log = out / ".ssogen" / "engine.log"
    started = log.read_text().count("init engine") if log.exists() else 0
    deadline = time.monotonic() + timeout
    while not log.exists() or log.read_text().count("init engine") <= started:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the engine did not start in time"
        time.sleep(0.2)


def front_matter(folder: Path) -> str:
    return (folder / "README.md").read_text().split("---")[1]


def _dropped(folder: Path) -> pd.DataFrame:
    files = list((folder / "data" / "dropped").glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame(columns=["prompt_id"])


@pytest.mark.engine  # builds in their own processes: the process is the point
def test_ctrl_c_and_sigterm_each_stop_with_status_130_keep_whole_chunks_and_say_how_to_resume(tmp_path):
    # The two builds run side by side (their engine starts overlap), each stopped after its first chunk:
    # Ctrl-C reaches the whole foreground group; a scheduler's SIGTERM reaches the build process.
    small = ("--limit", "6", "--chunk-size", "1", "--max-new-tokens", "16")
    builds = {signum: (tmp_path / signum.name, start_build(tmp_path / signum.name, QUERIES, *small))
              for signum in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    waiting, deadline = dict(builds), time.monotonic() + 600
    while waiting:  # each is signalled as soon as its first chunk is on disk
        for signum, (out, proc) in list(waiting.items()):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            if list((out / CHUNKS_DIR).glob("chunk-*.parquet")):
                if signum == signal.SIGINT:
                    os.killpg(proc.pid, signum)
                else:
                    proc.send_signal(signum)
                del waiting[signum]
        assert time.monotonic() < deadline, "no chunk finished in time"
        time.sleep(0.1)
    for signum, (out, proc) in builds.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, (signum.name, stderr[-2000:])
        assert "run the same command again to resume" in stderr
        chunks = list((out / CHUNKS_DIR).glob("chunk-*.parquet"))
        assert chunks and all(len(pd.read_parquet(c)) == 1 for c in chunks) and len(chunks) < 6, signum.name


def vllm_processes(pid: int) -> dict[str, psutil.Process]:
    """vLLM's engine processes under a build, by title: VLLM::EngineCore and VLLM::Worker."""
    return {p.name(): p for p in psutil.Process(pid).children(recursive=True) if p.name().startswith("VLLM::")}


def untouched(folder: Path) -> dict[Path, float]:
    """Every file's time of change, but the lock's (a refused run held it, which writes who holds it)."""
    return {p: p.stat().st_mtime for p in folder.rglob("*") if p.name != "lock"}


def test_a_rerun_with_other_settings_is_refused_naming_what_changed(built_folder):
    before = untouched(built_folder)
    result = run_cli(
        "build", "--queries", str(QUERIES), *BUILT_ARGS,
        "--seed", "5", "--alpha", "0.3", "--output", str(built_folder),
    )  # fmt: skip
    assert result.returncode == 2
    assert "seed: 0 -> 5" in result.stderr and "alpha: 0.66 -> 0.3" in result.stderr
    assert "--overwrite" in result.stderr
    assert untouched(built_folder) == before


def test_overwrite_starts_a_build_folder_afresh(tmp_path):
    settings = {"run": {"seed": 0}, "settings": {}}
    folder = OutputFolder(tmp_path / "out")
    folder.prepare(settings, overwrite=False)
    folder.write_chunk([])
    with pytest.raises(UsageError, match="seed: 0 -> 1"):
        folder.prepare({"run": {"seed": 1}, "settings": {}}, overwrite=False)
    folder.prepare({"run": {"seed": 1}, "settings": {}}, overwrite=True)
    assert folder.chunk_files() == []
    assert yaml.safe_load((tmp_path / "out" / SETTINGS_FILE).read_text())["run"] == {"seed": 1}


def test_overwrite_never_deletes_a_folder_ssogen_did_not_build(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        OutputFolder(tmp_path).prepare({"run": {}, "settings": {}}, overwrite=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def engine_whose_death_vllm_notices_after(delay: float | None) -> Engine:
    """An `Engine` shell around vLLM's dead-engine flag only: what `Engine.failure` reads."""
    resources = SimpleNamespace(engine_dead=False)
    if delay is not None:
        threading.Timer(delay, lambda: setattr(resources, "engine_dead", True)).start()
    engine = Engine.__new__(Engine)
    engine.llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=SimpleNamespace(resources=resources)))
    return engine


def test_a_call_that_fails_just_before_vllm_notices_the_death_is_reported_as_the_death():
    # Seen in the kill test: a utility call came back "cancelled" a moment before vLLM marked the engine dead.
    engine = engine_whose_death_vllm_notices_after(0.5)
    error = engine.failure("sample y+ y- y°", RuntimeError("Call to pause_scheduler method failed: cancelled"))
    assert str(error).startswith("the vLLM engine's process exited during sample y+ y- y° (killed, or out of memory")


@pytest.mark.slow
def test_a_failure_of_a_live_engine_is_reported_as_it_is_after_the_grace_period():
    engine = engine_whose_death_vllm_notices_after(None)
    started = time.monotonic()
    error = engine.failure("select features", ValueError("bad request"))
    assert str(error) == "the vLLM engine failed during select features: ValueError: bad request"
    assert time.monotonic() - started < 30


def test_an_engine_error_after_an_interrupt_is_reported_as_the_interrupt(monkeypatch, tmp_path, capsys):
    # Ctrl-C reaches vLLM's processes too; seen in CI: their exit surfaced as an engine error, not as Ctrl-C.
    def build(config, overwrite, engine_log=True):
        cli._interrupted.set()  # what the signal handler records
        raise EngineError("the vLLM engine's process exited during sample y+ y- y°")

    monkeypatch.setattr(pipeline, "build", build)
    monkeypatch.setattr(cli, "_interrupted", type(cli._interrupted)())
    args = cli.make_parser().parse_args(["build", "--output", str(tmp_path / "out")])
    assert cli._cmd_build(args) == 130
    assert "interrupted: finished chunks are kept in" in capsys.readouterr().err


def test_an_engine_error_without_an_interrupt_stays_an_engine_error(monkeypatch, tmp_path):
    def build(config, overwrite, engine_log=True):
        raise EngineError("the vLLM engine's process exited during sample y+ y- y°")

    monkeypatch.setattr(pipeline, "build", build)
    monkeypatch.setattr(cli, "_interrupted", type(cli._interrupted)())
    args = cli.make_parser().parse_args(["build", "--output", str(tmp_path / "out")])
    with pytest.raises(EngineError, match="run the same command again to resume"):
        cli._cmd_build(args)
