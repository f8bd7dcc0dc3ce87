"""Write failures (a file-size limit, a read-only folder): exit 1 with one line naming the path and the cause, no
traceback, finished work intact, and a re-run after the fix completes: during a build and its export. (The
bundled model's conversion into the cache: tests/test_models.py.)"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset

from ssogen.config import BuildConfig
from ssogen.output.store import CHUNKS_DIR, OutputFolder
from tests.conftest import BUILT_ARGS, QUERIES, REPO, error_lines, make_record, run_cli

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def run_cli_limited(*args: str, file_size: int | None = None, env: dict[str, str] | None = None, **kwargs):
    """`python -m ssogen ...` with its files limited to `file_size` bytes (as `ulimit -f` does).

    Permissions hold for root too: root's powers to write where permissions say no are dropped for the child,
    so a read-only folder is read-only for it, as it is for every other user.
    """

    def limit() -> None:
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        if os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
                if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return subprocess.run(
        [sys.executable, "-m", "ssogen", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        preexec_fn=limit,
        **kwargs,
    )


def chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_a_read_only_folder_stops_before_any_work_naming_the_lock_and_keeps_its_chunks(tmp_path, built_folder):
    """The lock is the first write, so a folder the build cannot write is refused before the engine starts.
    (A disk that fills up mid-build: tests/test_resume.py, with the other faults of a long job.)"""
    out = tmp_path / "out"
    shutil.copytree(built_folder, out)
    kept = sorted((out / CHUNKS_DIR).glob("chunk-*.parquet"))
    args = (
        "build",
        "--queries",
        str(QUERIES),
        *BUILT_ARGS,
        "--output",
        str(out),
    )
    chmod_tree(out, writable=False)
    try:
        read_only = run_cli_limited(*args)
    finally:
        chmod_tree(out, writable=True)
    assert read_only.returncode == 1, read_only.stderr[-3000:]
    assert error_lines(read_only.stderr) == [
        f"error: cannot write {out}/.ssogen/lock (taking the folder's lock): permission denied "
        "(make it writable, or use a folder you can write)",
        f"finished chunks are kept in {out}; run the same command again to resume",
    ]
    assert "Traceback" not in read_only.stderr
    assert sorted((out / CHUNKS_DIR).glob("chunk-*.parquet")) == kept


def finished_folder(out: Path, queries: Path, rows: int) -> BuildConfig:
    """A build folder whose every query is finished (synthetic records with 6 KB answers): a re-run of the
    build only exports, with no engine."""
    from ssogen.generation.plan import plan_build

    config = BuildConfig(queries=str(queries), limit=rows, output=out)
    plan = plan_build(config)
    plan.folder.prepare(plan.settings, overwrite=False)
    records = []
    for i, query in enumerate(plan.queries.queries):
        record = make_record(i, prompt_id=query.prompt_id, prompt=query.prompt, drop_reason=None)
        records.append({**record, **{role: f"{role} {i} " + os.urandom(3000).hex() for role in ("chosen", "rejected")}})
    plan.folder.write_chunk(records)
    return config


@pytest.mark.slow
def test_a_failed_export_keeps_the_previous_export_and_a_rerun_exports(tmp_path):
    out = tmp_path / "out"
    queries = QUERIES
    finished_folder(out, queries, rows=8)
    args = ("build", "--queries", str(queries), "--limit", "8", "--output", str(out))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in [*(out / "data").rglob("*.parquet"), out / "README.md"]}
    (out / "README.md").write_text(before[out / "README.md"].decode() + "\nmarker of the previous export\n")

    failed = run_cli_limited(*args, file_size=16_000)
    assert failed.returncode == 1, failed.stderr[-3000:]
    line, resume = error_lines(failed.stderr)
    assert line.startswith(f"error: cannot write {out}/.ssogen/export-new/") and "(exporting): file too large" in line
    assert line.endswith("; the export was abandoned and the folder's previous export is unchanged")
    assert resume == f"finished chunks are kept in {out}; run the same command again to resume"
    assert "Traceback" not in failed.stderr
    assert {p: p.read_bytes() for p in (out / "data").rglob("*.parquet")} == {
        p: b for p, b in before.items() if p.suffix == ".parquet"
    }
    assert "marker of the previous export" in (out / "README.md").read_text()
    assert not (out / ".ssogen" / "export-new").exists()

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "marker of the previous export" not in (out / "README.md").read_text()
    # A cache of its own: `datasets` keys a local folder's cache by its name and card, not by its files.
    loaded = load_dataset(str(out), "sso", cache_dir=str(tmp_path / "hf-cache"))
    assert sum(len(split) for split in loaded.values()) == 8


def test_a_write_failure_names_the_path_and_the_cause_for_each_kind(tmp_path):
    import errno

    from ssogen.files import write_error

    path = tmp_path / "x.parquet"
    causes = {
        errno.ENOSPC: "no space left on the device (free some space)",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the file system is read-only (use a writable folder)",
        errno.EACCES: "permission denied",
        errno.EFBIG: "file too large: a file-size limit is in force (ulimit -f); lift it",
    }
    for code, cause in causes.items():
        message = str(write_error(path, OSError(code, os.strerror(code))))
        assert message.startswith(f"cannot write {path}: {cause}"), message
    # pyarrow and safetensors report the errno in their own words.
    arrow = OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert str(write_error(path, arrow)).startswith(f"cannot write {path}: no space left")
    rust = RuntimeError("Error while serializing: I/O error: Disk quota exceeded (os error 122)")
    assert "disk quota exceeded" in str(write_error(path, rust))


def test_a_chunk_write_that_fails_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    import pyarrow.parquet

    from ssogen.errors import WriteError
    from ssogen.generation.plan import run_settings

    folder = OutputFolder(tmp_path / "out")
    folder.prepare(run_settings(BuildConfig(), _model(), _templates()), overwrite=False)
    folder.write_chunk([{**make_record(0), "drop_reason": None}])

    def full_disk(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pyarrow.parquet, "write_table", full_disk)
    try:
        folder.write_chunk([{**make_record(1), "drop_reason": None}])
    except WriteError as exc:
        assert str(exc).startswith(f"cannot write {folder.chunks}/chunk-00000001.parquet: no space left")
    else:
        raise AssertionError("the write did not fail")
    assert sorted(p.name for p in folder.chunks.iterdir()) == ["chunk-00000000.parquet"]


def _model():
    from ssogen.inputs.models import ModelRef

    return ModelRef(path="m", name="m", revision="r")


def _templates():
    from ssogen.inputs.library import Templates

    return Templates(None)
