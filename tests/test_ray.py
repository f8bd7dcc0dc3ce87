"""`--executor ray`: the same stages on a local Ray cluster (one replica), resumable like a local build."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from ssogen.output.store import CHUNKS_DIR
from tests.conftest import BUILT_ARGS, QUERIES, REPO, run_cli

RAY_ARGS = (*BUILT_ARGS, "--limit", "4", "--chunk-size", "2", "--executor", "ray", "--replicas", "1")


def query_ids(folder: Path) -> list[str]:
    ids = []
    for config in ("sso", "dropped"):
        for path in (folder / "data" / config).glob("*.parquet"):
            ids += list(pd.read_parquet(path).prompt_id)
    return ids


def test_a_ray_build_survives_a_killed_replica_and_holds_the_same_query_ids_as_a_local_run(tmp_path, built_folder):
    queries = QUERIES
    out = tmp_path / "ray"
    args = [sys.executable, "-m", "ssogen", "build", "--queries", str(queries), *RAY_ARGS, "--output", str(out)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    replicas = out / ".ssogen" / "replicas"
    deadline = time.monotonic() + 900
    while not (replicas.is_dir() and any(replicas.iterdir())):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no replica started in time"
        time.sleep(0.5)
    time.sleep(5)  # let it get into a chunk
    for marker in replicas.iterdir():
        with contextlib.suppress(ProcessLookupError):  # a replica may already be gone
            os.kill(int(marker.name), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=1200)
    chunks = list((out / CHUNKS_DIR).glob("chunk-*.parquet"))
    for chunk in chunks:
        assert len(pd.read_parquet(chunk)) >= 1  # whatever was saved is whole
    if proc.returncode != 0:  # failed rather than recovered: whole chunks kept, and it says how to go on
        assert "resume" in stderr, stderr[-3000:]
        rerun = run_cli("build", "--queries", str(queries), *RAY_ARGS, "--output", str(out), timeout=1200)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        stderr = rerun.stderr
    assert "ray)" in stderr  # chunks came back from the replica pool
    assert "engine figures: in the Ray replicas" in stderr
    ids = query_ids(out)
    assert len(ids) == len(set(ids)) == 4
    # The local run of the same settings built the first 9 queries; the first 4 are these.
    from ssogen.inputs.sources import load_queries

    first_four = [q.prompt_id for q in load_queries(str(queries), limit=4).queries]
    assert set(ids) == set(first_four) <= set(query_ids(built_folder))
    written = {p.name for p in (out / "data").iterdir()}
    assert {"sso", "dpo", "steer_pos", "steer_neg", "reward", "sso_reference"} <= written
    assert written <= {p.name for p in (built_folder / "data").iterdir()} | {"dropped"}
