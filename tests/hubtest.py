"""Test helpers for publishing: the loopback Hub server (tests/hub_server.py) and synthetic built folders.

`HubServers` starts the server as a subprocess on 127.0.0.1, port 0, and reads its ``READY <port>`` line
(the ``start_hub`` / ``hub`` fixtures of conftest.py wrap it). Pointing the client at it: huggingface_hub
reads ``HF_ENDPOINT`` once, at import, into ``constants.ENDPOINT`` *and* into
``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (the download URL template). Monkeypatching
``constants.ENDPOINT`` alone therefore sends API calls to the loopback server but downloads to
huggingface.co. So the tests pass ``endpoint=`` explicitly to ``push_folder``, ``HfApi`` and
``snapshot_download``; ``HF_ENDPOINT`` is set in the environment as well, so that nothing started from a
test (a subprocess, `datasets`) could reach the real Hub.

`built_folder` writes a finished build folder (settings, chunks, views, card) from synthetic records,
through ssogen's own store and export, without an engine.

Model repos: ``start(models={repo_id: {path: file}})`` seeds the server's storage with one commit per repo before
it starts (files hard-linked, so a 270 MB model costs no copy), and `Hub.file_gets` counts the file downloads a
client made from the requests log.
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SERVER = Path(__file__).with_name("hub_server.py")
TOKEN = "hf_loopbackTestToken0123456789"
READ_TOKEN = "hf_loopbackReadOnlyToken012345"  # --read-token of the servers started here
REPO = "ssogen-test/prefs"


@dataclass
class Hub:
    """A running hub_server.py and readers for what it stored."""

    url: str
    storage: Path

    def meta(self, repo_id: str = REPO) -> dict:
        return json.loads((self.storage / "datasets" / repo_id / "repo.json").read_text())

    def files(self, oid: str, repo_id: str = REPO) -> dict[str, bytes]:
        snap = self.storage / "datasets" / repo_id / "commits" / oid
        return {p.relative_to(snap).as_posix(): p.read_bytes() for p in snap.rglob("*") if p.is_file()}

    def head_files(self, repo_id: str = REPO, branch: str = "main") -> dict[str, bytes]:
        return self.files(self.meta(repo_id)["branches"][branch], repo_id)

    def requests(self) -> list[str]:
        log = self.storage / "requests.log"
        return log.read_text().splitlines() if log.exists() else []

    def commit_requests(self) -> list[str]:
        return [r for r in self.requests() if r.startswith("POST ") and "/commit/" in r]

    def model_meta(self, repo_id: str) -> dict:
        return json.loads((self.storage / "models" / repo_id / "repo.json").read_text())

    def file_gets(self, repo_id: str, since: int = 0, status: str = "200") -> Counter[str]:
        """How many times each file of model ``repo_id`` was downloaded (GET .../resolve/REV/PATH answered 200;
        ``status="206"``: read in part), in the requests from number ``since`` on; the key is ``REV/PATH``."""
        prefix = f"GET /{repo_id}/resolve/"
        gets: Counter[str] = Counter()
        for line in self.requests()[since:]:
            method_path, _, answered = line.rpartition(" ")
            if method_path.startswith(prefix) and answered == status:
                gets[method_path.removeprefix(prefix)] += 1
        return gets


class HubServers:
    """Starts hub_server.py subprocesses for one test and stops them at the end."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path, self.monkeypatch = tmp_path, monkeypatch
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> HubServers:
        self.monkeypatch.delenv("HF_TOKEN", raising=False)
        self.monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        return self

    def start(
        self,
        fail_first: int = 0,
        *,
        faults: tuple[str, ...] = (),
        args: tuple[str, ...] = (),
        models: dict[str, dict[str, Path]] | None = None,
    ) -> Hub:
        """A new server; ``faults`` are its ``--fault`` specs, ``args`` any other options, ``models`` model repos
        it starts with (repo id -> {path in the repo: file}), each one commit on main."""
        storage = self.tmp_path / f"hub{len(self.procs)}"
        for repo_id, files in (models or {}).items():
            seed_model_repo(storage, repo_id, files)
        cmd = [sys.executable, str(SERVER), "--port", "0", "--storage", str(storage), "--token", TOKEN]
        cmd += ["--read-token", READ_TOKEN, "--fail-first", str(fail_first), *args]
        cmd += [word for spec in faults for word in ("--fault", spec)]
        stderr = self.tmp_path / "hub_server.stderr"
        with open(stderr, "ab") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:  # bounded wait: a broken server must not hang the suite
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=20)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"hub_server did not start: {line!r}\n{stderr.read_text()}")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        self.monkeypatch.setenv("HF_ENDPOINT", url)
        return Hub(url=url, storage=storage)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def seed_model_repo(storage: Path, repo_id: str, files: dict[str, Path]) -> str:
    """Write model repo ``repo_id`` into a (not yet started) server's storage: one commit on main holding ``files``
    (the layout `hub_server.Repo.load` reads). Returns the commit id."""
    root = storage / "models" / repo_id
    oid = hashlib.sha1(f"{repo_id}\n{sorted(files)}\n{time.time_ns()}".encode()).hexdigest()
    for path, source in files.items():
        target = root / "commits" / oid / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system
            shutil.copyfile(source, target)
    date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    commit = {"oid": oid, "parent": None, "title": "add the model", "message": "", "date": date}
    meta = {"private": False, "branches": {"main": oid}, "tags": {}, "commits": [commit]}
    (root / "repo.json").write_text(json.dumps(meta, indent=1))
    return oid


def built_folder(
    root: Path,
    *,
    kept: int = 3,
    dropped: int = 0,
    round_: int = 0,
    push_to_hub: str | None = None,
    export: bool = True,
    first: int = 0,
    **settings: Any,
) -> Path:
    """A finished build folder of ``kept`` records numbered from ``first`` and ``dropped`` dropped queries.

    With ``export=False`` its build stopped before the export; called again on the same folder it re-exports
    the same chunks, as re-running a finished build does.
    """
    from ssogen.config import BuildConfig
    from ssogen.generation.plan import run_settings
    from ssogen.inputs.library import Templates
    from ssogen.inputs.models import ModelRef
    from ssogen.output.export import export_folder
    from ssogen.output.store import OutputFolder, ids_digest
    from tests.conftest import make_record

    config = BuildConfig(output=root, round=round_, push_to_hub=push_to_hub, **settings)
    folder = OutputFolder(root)
    rows = [{**make_record(first + i, round=round_), "drop_reason": None} for i in range(kept)]
    rows += [{**make_record(first + 100 + i), "drop_reason": "empty_answer"} for i in range(dropped)]
    # Recorded as built from a synthetic query list (not the bundled one its settings name), the same for
    # every folder made here, so that two of them merge as shards of one build.
    queries_hash = ids_digest(f"{i:016x}" for i in range(1000))
    run = run_settings(config, ModelRef(path="m", name="m", revision="r"), Templates(None), queries_hash)
    folder.prepare(run, overwrite=False)
    if not folder.chunk_files():  # called again on a built folder: re-export it, as a re-run build does
        folder.write_chunk(rows)
    if export:
        export_folder(
            folder,
            [r["prompt_id"] for r in rows],
            templates=Templates(None),
            settings=run,
            seed=config.seed,
            test_size=0.0,
            license=config.license,
            repo_id=push_to_hub,
            card_plots=config.card_plots,
        )
    return root
