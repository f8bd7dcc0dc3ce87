"""One writer per output folder: a second process is refused at once, naming the holder; a dead holder's lock is
taken over, saying so; shards (other folders) never contend. A real build refusing a second one on its folder is
part of tests/test_resume.py's chain of faults."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssogen.output.lock import LOCK_FILE, FolderLocked
from ssogen.output.store import SETTINGS_FILE, OutputFolder
from tests.conftest import REPO, run_cli

HOLD = """
import sys, time
from pathlib import Path
from ssogen.output.store import OutputFolder
with OutputFolder(Path(sys.argv[1])).lock(sys.argv[2], read_only=sys.argv[2] == "ssogen push"):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold_lock(folder: Path, command: str = "ssogen build") -> subprocess.Popen:
    """Another process holding the folder's lock, as a running build would."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), command], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def holder(tmp_path):
    proc = hold_lock(tmp_path / "out")
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_build_on_a_locked_folder_exits_2_at_once_naming_the_holder(tmp_path, holder):
    out = tmp_path / "out"
    started = time.monotonic()
    result = run_cli("build", "--limit", "2", "--output", str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    assert time.monotonic() - started < 60  # no model was loaded: the lock comes first
    assert f"{out} is in use by another ssogen process: pid {holder.pid} on host {socket.gethostname()}" in (
        result.stderr
    )
    assert "running `ssogen build` since " in result.stderr and " ago)" in result.stderr
    assert "wait for that one to finish or stop it" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] == [LOCK_FILE]  # no write


def test_merge_and_push_refuse_a_folder_another_process_writes(tmp_path, holder):
    out, other = tmp_path / "out", tmp_path / "other"
    other.mkdir()
    for folder in (out, other):
        (folder / SETTINGS_FILE).write_text("run: {round: 0}\nsettings: {}\n")
    pushed = run_cli("push", str(out), "org/name", env={"HF_TOKEN": "hf_" + "x" * 34, "HF_HUB_OFFLINE": "1"})
    merged_into = run_cli("merge", str(other), "--output", str(out))
    merged_from = run_cli("merge", str(out), str(other), "--output", str(tmp_path / "merged"))
    for refused in (pushed, merged_into, merged_from):
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert f"{out} is in use by another ssogen process: pid {holder.pid}" in refused.stderr
    assert not (tmp_path / "merged").exists()


def test_shards_in_other_folders_never_contend(tmp_path, holder):
    with OutputFolder(tmp_path / "shard-1").lock("ssogen build"):
        assert (tmp_path / "shard-1" / LOCK_FILE).is_file()


def test_a_lock_left_by_a_killed_process_is_taken_over_and_said(tmp_path, caplog):
    out = tmp_path / "out"
    proc = hold_lock(out)
    os.kill(proc.pid, signal.SIGKILL)  # no release: its name stays in the lock file
    proc.wait()
    with caplog.at_level(logging.WARNING, logger="ssogen.output.lock"), OutputFolder(out).lock("ssogen merge"):
        pass
    said = caplog.text
    assert f"took over the lock of {out}, left by pid {proc.pid} on host {socket.gethostname()}" in said
    assert "`ssogen build`" in said and "ended without releasing it (killed or crashed)" in said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssogen.output.lock"), OutputFolder(out).lock("ssogen merge"):
        pass
    assert "took over" not in caplog.text  # a clean release leaves nothing to take over


def test_the_lock_is_reentrant_in_one_process_and_free_once_released(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with OutputFolder(out).lock("ssogen build"), OutputFolder(out).lock("ssogen build"):
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from ssogen.output.lock import folder_lock\n"
             "with folder_lock(sys.argv[1], 'probe'): pass", str(out)],
            cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        assert probe.returncode == 1 and "FolderLocked" in probe.stderr
    proc = hold_lock(out)  # released: another process takes it
    proc.kill()
    proc.wait()


def test_an_in_process_caller_gets_a_usage_error(tmp_path, holder):
    with pytest.raises(FolderLocked, match=f"pid {holder.pid}") as refused, OutputFolder(tmp_path / "out").lock("x"):
        pass
    assert refused.value.exit_code == 2


def test_a_command_that_stops_before_writing_leaves_no_folder_behind(tmp_path):
    result = run_cli("build", "--queries", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "missing.jsonl" in result.stderr
    assert not (tmp_path / "out").exists()
