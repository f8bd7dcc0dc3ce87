"""Publishing tests: the real huggingface_hub client against tests/hub_server.py on loopback.

Each test starts the server as a subprocess (the ``hub`` / ``start_hub`` fixtures; how the client is
pointed at it: tests/hubtest.py). The policy points of issue 15 are in tests/test_publish_policy.py.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from huggingface_hub import HfApi, snapshot_download

from ssogen.errors import PublishError, UsageError
from ssogen.hub.publish import push_folder
from ssogen.hubmeta import validate_repo_id
from ssogen.output.lock import LOCK_FILE
from tests.hubtest import REPO, TOKEN, Hub


def make_folder(root: Path, round_: int, *, with_test_split: bool = False) -> Path:
    """A small dataset folder in the Hub layout ssogen writes: card, parquet shards, settings."""
    folder = root / f"out-round{round_}-{int(with_test_split)}"
    rows = [
        {
            "prompt_id": f"p{i}",
            "prompt": f"question {i}",
            "chosen": f"good {i} r{round_}",
            "rejected": f"bad {i}",
            "weight": 0.5 + i,
            "round": round_,
        }
        for i in range(3)
    ]
    shards = {"data/sso/train-00000-of-00001.parquet": rows}
    shards["data/dpo/train-00000-of-00001.parquet"] = [
        {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "weight": r["weight"]} for r in rows
    ]
    if with_test_split:
        shards["data/sso/test-00000-of-00001.parquet"] = rows[:1]
    for rel, table in shards.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(table).to_parquet(folder / rel, index=False)
    configs = "".join(
        f"- config_name: {name}\n  data_files:\n  - split: train\n    path: data/{name}/train-*.parquet\n"
        for name in ("sso", "dpo")
    )
    (folder / "README.md").write_text(f"---\nlicense: apache-2.0\nconfigs:\n{configs}---\n# Round {round_}\n")
    (folder / "ssogen.yaml").write_text(f"round: {round_}\nseed: 0\nmodel: tiny\n")
    return folder


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def digests(folder: Path) -> dict[str, tuple[str, float]]:
    """Content hash and mtime of every entry: a file written, added or removed changes it.

    Except the folder's lock (`ssogen.output.lock`), which every command on the folder takes, a push included.
    """
    lock = folder / LOCK_FILE
    return {
        p.relative_to(folder).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
            p.stat().st_mtime,
        )
        for p in sorted([folder, *folder.rglob("*")])
        if p not in (lock, lock.parent)
    }


def without_gitattributes(files: dict[str, bytes]) -> dict[str, bytes]:
    return {p: b for p, b in files.items() if p != ".gitattributes"}


def download(hub: Hub, revision: str, cache: Path) -> dict[str, bytes]:
    path = snapshot_download(
        REPO, repo_type="dataset", revision=revision, endpoint=hub.url, token=TOKEN, cache_dir=cache
    )
    return without_gitattributes(local_files(Path(path)))


def test_push_stores_every_file_byte_for_byte_in_one_commit_and_tags_round_0(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(tmp_path, 0)
    before = digests(folder)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # no token argument: HF_TOKEN must be picked up

    result = push_folder(folder, REPO, round=0, endpoint=hub.url)

    meta = hub.meta()
    assert len(meta["commits"]) == 2  # the repo's initial commit + exactly one for the round
    assert len(hub.commit_requests()) == 1
    assert meta["commits"][-1]["oid"] == result.commit_oid == meta["branches"]["main"]
    assert "round 0" in meta["commits"][-1]["title"]
    assert meta["tags"] == {"round-0": result.commit_oid}
    assert (result.repo_id, result.revision, result.tag) == (REPO, "main", "round-0")
    assert without_gitattributes(hub.files(result.commit_oid)) == local_files(folder)
    assert download(hub, "round-0", tmp_path / "cache") == local_files(folder)
    assert digests(folder) == before


def test_second_round_keeps_round_0_under_its_tag_and_prunes_stale_data_files(hub: Hub, tmp_path: Path) -> None:
    round0 = make_folder(tmp_path, 0, with_test_split=True)
    round1 = make_folder(tmp_path, 1)
    stale = "data/sso/test-00000-of-00001.parquet"
    assert stale in local_files(round0) and stale not in local_files(round1)
    assert (
        local_files(round0)["data/sso/train-00000-of-00001.parquet"]
        != local_files(round1)["data/sso/train-00000-of-00001.parquet"]
    )

    first = push_folder(round0, REPO, round=0, token=TOKEN, endpoint=hub.url)
    second = push_folder(round1, REPO, round=1, token=TOKEN, endpoint=hub.url)

    meta = hub.meta()
    assert meta["tags"] == {"round-0": first.commit_oid, "round-1": second.commit_oid}
    assert meta["branches"]["main"] == second.commit_oid
    assert len(hub.commit_requests()) == 2
    assert download(hub, "round-0", tmp_path / "cache0") == local_files(round0)
    assert download(hub, "main", tmp_path / "cache1") == local_files(round1)
    assert stale not in HfApi(endpoint=hub.url, token=TOKEN).list_repo_files(REPO, repo_type="dataset")


def test_pushing_a_round_again_refuses_without_overwrite_round_and_commits_nothing(hub: Hub, tmp_path: Path) -> None:
    first = push_folder(make_folder(tmp_path, 0), REPO, round=0, token=TOKEN, endpoint=hub.url)
    commits, seen = len(hub.meta()["commits"]), len(hub.requests())
    redo = make_folder(tmp_path, 0, with_test_split=True)  # different content, same round

    with pytest.raises(PublishError, match="--overwrite-round") as refused:
        push_folder(redo, REPO, round=0, token=TOKEN, endpoint=hub.url)
    assert "round-0 already exists" in str(refused.value)
    assert len(hub.meta()["commits"]) == commits
    assert not [r for r in hub.requests()[seen:] if "/preupload/" in r or "/commit/" in r]
    assert hub.meta()["tags"] == {"round-0": first.commit_oid}

    again = push_folder(redo, REPO, round=0, token=TOKEN, endpoint=hub.url, overwrite_round=True)
    assert again.commit_oid != first.commit_oid
    assert hub.meta()["tags"] == {"round-0": again.commit_oid}
    assert download(hub, "round-0", tmp_path / "cache") == local_files(redo)


def test_wrong_token_fails_with_auth_message_without_leaking_it_or_touching_the_folder(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_folder(tmp_path, 0)
    before = digests(folder)
    wrong = "hf_wrongTokenThatMustNotLeak42"
    caplog.set_level(logging.DEBUG)

    with pytest.raises(PublishError) as failed:
        push_folder(folder, REPO, round=0, token=wrong, endpoint=hub.url, backoff_seconds=0.01)

    message = str(failed.value)
    assert "authentication failed" in message
    assert "ssogen push" in message and REPO in message
    assert wrong not in message and TOKEN not in message
    assert failed.value.__cause__ is None
    assert wrong not in caplog.text
    assert digests(folder) == before
    # The first call (reading the repo) is answered 401, and a 401 is not retried.
    assert hub.requests() == [f"GET /api/datasets/{REPO} 401"]
    assert not [r for r in hub.requests() if "/preupload/" in r or "/commit/" in r]


def test_commit_answered_500_is_retried_then_succeeds(start_hub: Callable[..., Hub], tmp_path: Path) -> None:
    hub = start_hub(fail_first=1)
    folder = make_folder(tmp_path, 0)

    result = push_folder(folder, REPO, round=0, token=TOKEN, endpoint=hub.url, backoff_seconds=0.01)

    assert [r.rsplit(" ", 1)[1] for r in hub.commit_requests()] == ["500", "200"]
    assert len(hub.meta()["commits"]) == 2
    assert hub.meta()["tags"] == {"round-0": result.commit_oid}
    assert without_gitattributes(hub.files(result.commit_oid)) == local_files(folder)


def test_commit_failing_past_max_retries_raises_publish_error_with_retry_command(
    start_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    hub = start_hub(fail_first=10)
    folder = make_folder(tmp_path, 0)
    started = time.monotonic()

    with pytest.raises(PublishError, match="ssogen push") as failed:
        push_folder(folder, REPO, round=0, token=TOKEN, endpoint=hub.url, max_retries=2, backoff_seconds=0.01)

    assert "after 3 attempts" in str(failed.value) and "HTTP 500" in str(failed.value)
    assert len(hub.commit_requests()) == 3
    assert hub.meta()["tags"] == {}
    assert time.monotonic() - started < 10


def test_push_to_another_branch_creates_it_and_leaves_main_alone(hub: Hub, tmp_path: Path) -> None:
    folder = make_folder(tmp_path, 2)

    result = push_folder(folder, REPO, round=2, token=TOKEN, endpoint=hub.url, push_branch="rounds")

    meta = hub.meta()
    assert meta["branches"]["rounds"] == result.commit_oid == meta["tags"]["round-2"]
    assert without_gitattributes(hub.files(meta["branches"]["main"])) == {}
    assert download(hub, "round-2", tmp_path / "cache") == local_files(folder)


@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "bad name/x", "org/", "/name"])
def test_malformed_repo_ids_raise_usage_error_naming_push_to_hub(repo_id: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--push-to-hub") as bad:
        validate_repo_id(repo_id)
    assert "ORG/NAME" in str(bad.value)
    assert bad.value.exit_code == 2
    with pytest.raises(UsageError, match="--push-to-hub"):
        push_folder(make_folder(tmp_path, 0), repo_id, round=0, token=TOKEN, endpoint="http://127.0.0.1:9")


def test_valid_repo_id_is_returned_unchanged() -> None:
    assert validate_repo_id("my-org/sso.prefs_v2") == "my-org/sso.prefs_v2"


def test_cli_push_publishes_a_built_folder_and_datasets_loads_it_from_the_hub(
    hub: Hub, built_folder: Path, tmp_path: Path
) -> None:
    """`ssogen push` (its own process, HF_ENDPOINT + HF_TOKEN as a user sets them) then `load_dataset(id)`."""
    from tests.conftest import run_cli

    before = digests(built_folder)
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = run_cli("push", str(built_folder), REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert TOKEN not in result.stderr + result.stdout

    meta = hub.meta()
    expected = {p: b for p, b in local_files(built_folder).items() if not p.startswith(".ssogen/")}
    published = without_gitattributes(hub.files(meta["tags"]["round-0"]))
    # The card goes up with its snippets loading the repo instead of the folder it was built in.
    local_card = expected.pop("README.md").decode()
    assert f'load_dataset("{built_folder}", "dpo")' in local_card
    assert published.pop("README.md").decode() == local_card.replace(
        f'load_dataset("{built_folder}"', f'load_dataset("{REPO}"'
    )
    assert published == expected
    assert digests(built_folder) == before

    code = (
        "import sys; from datasets import load_dataset; "
        f"d = load_dataset({REPO!r}, 'dpo', split='train', cache_dir=sys.argv[1]); print(len(d), d.column_names)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "hf-cache")],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, **env},
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    rows, columns = loaded.stdout.strip().split(" ", 1)
    local_rows = sum(len(pd.read_parquet(p)) for p in (built_folder / "data" / "dpo").glob("train-*.parquet"))
    assert int(rows) == local_rows and "chosen" in columns


def test_cli_push_of_a_folder_that_is_not_a_build_is_refused(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    result = run_cli("push", str(tmp_path), REPO)
    assert result.returncode == 1 and "ssogen build" in result.stderr
    bad = run_cli("push", str(tmp_path), "not-a-repo-id")
    assert bad.returncode == 2 and "ORG/NAME" in bad.stderr
