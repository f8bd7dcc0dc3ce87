"""Publishing a careful user can trust (issue 15, points 1-9), against the loopback Hub server.

Visibility asked and set (never silently public), only finished folders pushed, no push from a shard,
foreign files never deleted silently and stale plots pruned, a retry line that reproduces the command,
--license and the token checked before any generation, HTML 503 / 429 Retry-After retried within a
stated bound, the card naming where it is loaded from, and an idempotent re-push. Every test drives the
real huggingface_hub client (or the real CLI) against tests/hub_server.py.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from huggingface_hub import HfApi

from ssogen.config import BuildConfig
from ssogen.errors import PublishError, UsageError
from ssogen.hub.calls import scrub_tokens
from ssogen.hub.publish import preflight_push, push_folder
from ssogen.output.merge import merge
from ssogen.output.store import OutputFolder
from tests.conftest import make_record, run_cli
from tests.hubtest import READ_TOKEN, REPO, TOKEN, Hub, built_folder


def push(folder: Path, hub: Hub, *, round_: int = 0, **options: object):
    return push_folder(folder, REPO, round=round_, token=TOKEN, endpoint=hub.url, backoff_seconds=0.01, **options)


def preflight(folder: Path, hub: Hub, *, repo_id: str = REPO, token: str = TOKEN, **options: object) -> str:
    options.setdefault("round", 0)
    return preflight_push(repo_id, folder=folder, token=token, endpoint=hub.url, backoff_seconds=0.01, **options)


def cli_env(hub: Hub, token: str = TOKEN) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": token, "HF_HUB_DISABLE_TELEMETRY": "1"}


def api(hub: Hub) -> HfApi:
    return HfApi(endpoint=hub.url, token=TOKEN)


def snippet_line(card: str) -> str:
    return next(line for line in card.splitlines() if line.startswith("dpo = load_dataset("))


# --- 1. visibility --------------------------------------------------------------------------------------------


def test_private_on_an_existing_public_repo_makes_it_private_before_uploading_and_says_so(
    hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = push(built_folder(tmp_path / "r0"), hub)
    assert first.private is False and hub.meta()["private"] is False
    caplog.set_level(logging.INFO, logger="ssogen")

    second = push(built_folder(tmp_path / "r1", round_=1), hub, round_=1, private=True)

    assert second.private is True and hub.meta()["private"] is True
    assert f"{REPO} was public; made it private (as --private asks)" in caplog.text
    requests = hub.requests()
    settings = requests.index(f"PUT /api/datasets/{REPO}/settings 200")
    commits = [i for i, r in enumerate(requests) if "/commit/" in r]
    assert commits[0] < settings < commits[1]  # private before the round's files were sent


def test_without_a_visibility_flag_a_new_repo_takes_its_orgs_default_and_an_existing_one_keeps_its_own(
    start_hub: Callable[..., Hub], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = start_hub(args=("--private-org", "ssogen-test"))  # the organisation makes new repos private
    caplog.set_level(logging.INFO, logger="ssogen")

    created = push(built_folder(tmp_path / "r0"), hub)
    assert created.private is True and hub.meta()["private"] is True
    assert f"created {REPO}: private (its namespace's default" in caplog.text

    kept = push(built_folder(tmp_path / "r1", round_=1), hub, round_=1)
    assert kept.private is True and hub.meta()["private"] is True
    assert not [r for r in hub.requests() if "/settings" in r]
    assert f"{REPO} is private (unchanged: neither --private nor --no-private given)" in caplog.text

    public = push(built_folder(tmp_path / "r2", round_=2), hub, round_=2, private=False)
    assert public.private is False and hub.meta()["private"] is False
    assert "was private; made it public (as --no-private asks)" in caplog.text


# --- 2. unfinished folders ------------------------------------------------------------------------------------


def _unfinished(kind: str, root: Path) -> Path:
    if kind == "build stopped before its export":
        return built_folder(root, export=False)
    folder = built_folder(root)
    if kind == "chunks newer than the export":
        OutputFolder(folder).write_chunk([{**make_record(50), "drop_reason": None}])
    elif kind == "a config's files missing":
        for path in (folder / "data" / "dpo").glob("*.parquet"):
            path.unlink()
    return folder


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("build stopped before its export", "no dataset card"),
        ("chunks newer than the export", "1 finished queries in .ssogen/chunks are not in its data/"),
        ("a config's files missing", "lists the config 'dpo' but no file matches"),
    ],
)
def test_push_of_an_unfinished_folder_is_refused_saying_what_is_missing_and_how_to_finish(
    hub: Hub, tmp_path: Path, kind: str, says: str
) -> None:
    folder = _unfinished(kind, tmp_path / "out")

    with pytest.raises(UsageError) as refused:
        push(folder, hub)

    assert says in str(refused.value)
    assert "Nothing was uploaded" in str(refused.value)
    assert "re-run the same `ssogen build` command (it resumes from the finished chunks)" in str(refused.value)
    assert hub.requests() == []  # refused before asking the Hub anything


def test_cli_push_of_an_interrupted_build_exits_2_and_of_a_shard_names_ssogen_merge(hub: Hub, tmp_path: Path) -> None:
    stopped = run_cli("push", str(built_folder(tmp_path / "a", export=False)), REPO, env=cli_env(hub))
    assert stopped.returncode == 2 and "the build was interrupted before its export" in stopped.stderr

    shard = built_folder(tmp_path / "s", num_shards=2, shard_index=1)
    refused = run_cli("push", str(shard), REPO, env=cli_env(hub))
    assert refused.returncode == 2 and "it is shard 1 of 2" in refused.stderr and "ssogen merge" in refused.stderr
    assert not [r for r in hub.requests() if "/commit/" in r]


# --- 3. shards never publish ----------------------------------------------------------------------------------


def test_push_to_hub_with_shards_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--num-shards 2.*ssogen merge .*ssogen push MERGED ssogen-test/prefs"):
        BuildConfig(num_shards=2, shard_index=1, push_to_hub=REPO).validate()
    out = tmp_path / "out"
    # A model that does not exist: a build that got past the settings check would stop there instead.
    result = run_cli(
        "build", "--num-shards", "4", "--push-to-hub", REPO, "--model", str(tmp_path / "none"), "--output", str(out)
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "--push-to-hub cannot be used with --num-shards 4" in result.stderr
    assert not out.exists()


# --- 4. foreign files and stale plots -------------------------------------------------------------------------


def _users_own_dataset(hub: Hub, root: Path) -> None:
    own = root / "own"
    (own / "data").mkdir(parents=True)
    pd.DataFrame({"text": ["mine"]}).to_parquet(own / "data" / "train.parquet")
    (own / "README.md").write_text("---\nlicense: mit\n---\n# My own dataset\n")
    api(hub).create_repo(REPO, repo_type="dataset")
    api(hub).upload_folder(folder_path=own, repo_id=REPO, repo_type="dataset", commit_message="my data")


def test_push_into_a_repo_holding_the_users_files_refuses_listing_them_unless_replace_repo_data(
    hub: Hub, tmp_path: Path
) -> None:
    _users_own_dataset(hub, tmp_path)
    head = hub.meta()["branches"]["main"]
    folder = built_folder(tmp_path / "out")

    with pytest.raises(UsageError) as early:  # before a build: the same refusal, before any generation
        preflight(folder, hub)
    assert "delete or replace README.md; delete or replace data/train.parquet" in str(early.value)
    with pytest.raises(PublishError) as refused:
        push(folder, hub)

    message = str(refused.value)
    assert "holds 2 files that ssogen did not publish" in message
    assert "replace README.md; delete data/train.parquet" in message
    assert f"ssogen push {folder} {REPO} --replace-repo-data" in message
    assert hub.meta()["branches"]["main"] == head and hub.meta()["tags"] == {}

    result = push(folder, hub, replace_repo_data=True)
    files = hub.files(result.commit_oid)
    assert "data/train.parquet" not in files and b"My own dataset" not in files["README.md"]


def test_a_new_round_prunes_plots_ssogen_wrote_and_keeps_a_file_it_does_not_manage(hub: Hub, tmp_path: Path) -> None:
    round0 = built_folder(tmp_path / "r0")
    (round0 / "plots").mkdir()
    (round0 / "plots" / "weight_hist.png").write_bytes(b"\x89PNG not really")
    push(round0, hub)
    api(hub).upload_file(path_or_fileobj=b"MIT\n", path_in_repo="LICENSE", repo_id=REPO, repo_type="dataset")

    result = push(built_folder(tmp_path / "r1", round_=1), hub, round_=1)

    files = hub.files(result.commit_oid)
    assert "plots/weight_hist.png" not in files
    assert files["LICENSE"] == b"MIT\n" and result.kept == ("LICENSE",)
    assert "plots/weight_hist.png" in hub.files(hub.meta()["tags"]["round-0"])  # round 0 keeps its plots


def test_a_card_edited_on_the_hub_since_ssogens_push_is_not_replaced_silently(hub: Hub, tmp_path: Path) -> None:
    push(built_folder(tmp_path / "r0"), hub)
    edited = hub.head_files()["README.md"] + b"\nA note added on the Hub.\n"
    api(hub).upload_file(path_or_fileobj=edited, path_in_repo="README.md", repo_id=REPO, repo_type="dataset")

    with pytest.raises(PublishError, match=r"holds 1 file that ssogen did not publish .*: replace README\.md\."):
        push(built_folder(tmp_path / "r1", round_=1), hub, round_=1)
    assert "round-1" not in hub.meta()["tags"]


# --- 5. the retry line and the token mask ---------------------------------------------------------------------


def test_retry_line_reproduces_the_users_flags_and_pasted_it_publishes_as_asked(
    start_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    hub = start_hub(fail_first=2)
    repo = "ssogen-test/hf_preferences"  # an ordinary name that starts like a token: must stay readable
    folder = built_folder(tmp_path / "out")

    with pytest.raises(PublishError) as failed:
        push_folder(
            folder, repo, round=0, token=TOKEN, endpoint=hub.url, private=True, push_branch="rounds",
            replace_repo_data=True, max_retries=1, backoff_seconds=0.01,
        )  # fmt: skip

    message = str(failed.value)
    line = f"ssogen push {folder} {repo} --push-branch rounds --private --replace-repo-data"
    assert f"To retry: {line}" in message and TOKEN not in message
    pasted = run_cli(*shlex.split(line)[1:], env=cli_env(hub))
    assert pasted.returncode == 0, pasted.stderr[-2000:]
    meta = hub.meta(repo)
    assert meta["private"] is True and meta["tags"]["round-0"] == meta["branches"]["rounds"]
    assert len(meta["commits"]) == 2  # the initial one and the round on `rounds`; main untouched


def test_the_mask_hides_real_tokens_only() -> None:
    token = "hf_" + "aB3" * 12
    assert scrub_tokens(f"org/hf_preferences, {token}, Bearer abc.def") == "org/hf_preferences, ***, ***"
    assert scrub_tokens(f"/tmp/hf_{'x' * 40}/out and ./hf_{'y' * 40}") == f"/tmp/hf_{'x' * 40}/out and ./hf_{'y' * 40}"
    assert scrub_tokens("push to my-org/data", secret="my-org") == "push to ***/data"


# --- 6. --license and the token, before any generation --------------------------------------------------------


def test_license_outside_the_hubs_list_is_refused_when_the_settings_are_checked() -> None:
    with pytest.raises(UsageError, match=r"--license: 'apache2' is not a license id .*did you mean apache-2\.0"):
        BuildConfig(license="apache2").validate()
    with pytest.raises(UsageError, match=r"--license: 'Apache-2\.0'"):
        BuildConfig(license="Apache-2.0").validate()
    for accepted in ("apache-2.0", "cc-by-nc-4.0", "llama3.1", "other"):
        BuildConfig(license=accepted).validate()


def test_build_with_push_to_hub_checks_the_token_before_loading_anything(hub: Hub, tmp_path: Path) -> None:
    wrong = "hf_" + "W" * 34
    out = tmp_path / "out"
    # The model does not exist either: a build that checked it first would fail on it instead.
    result = run_cli(
        "build", "--push-to-hub", REPO, "--model", str(tmp_path / "none"), "--output", str(out),
        env=cli_env(hub, token=wrong), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "authentication failed" in result.stderr and "Nothing was generated yet" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert not out.exists()


def test_preflight_names_a_read_only_token_a_foreign_namespace_and_a_missing_token(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "not-built-yet"
    with pytest.raises(UsageError, match="the token of tester is read-only"):
        preflight(folder, hub, token=READ_TOKEN)
    with pytest.raises(UsageError, match=r"neither your user name nor one of your organisations \(ssogen-test\)"):
        preflight(folder, hub, repo_id="someone-else/prefs")
    assert "tester may create ssogen-test/prefs" in preflight(folder, hub)
    assert "tester may create tester/prefs" in preflight(folder, hub, repo_id="tester/prefs")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))  # no stored login either
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UsageError, match="no Hugging Face token found"):
        preflight_push(REPO, folder=folder, round=0, endpoint=hub.url)
    assert not [r for r in hub.requests() if r.startswith(("POST", "PUT", "DELETE"))]


def test_preflight_refuses_a_round_already_published_with_other_content(hub: Hub, tmp_path: Path) -> None:
    push(built_folder(tmp_path / "r0"), hub)
    with pytest.raises(UsageError, match=r"--round 0: .* already has round-0 with other content.*--overwrite-round"):
        preflight(tmp_path / "fresh", hub)
    assert "round-0 is free" in preflight(tmp_path / "fresh", hub, overwrite_round=True)


def test_a_round_for_a_new_branch_accepts_what_ssogen_published_on_main(hub: Hub, tmp_path: Path) -> None:
    push(built_folder(tmp_path / "r0"), hub)

    assert "round-1 is free" in preflight(tmp_path / "r1", hub, round=1, push_branch="rounds")
    result = push(built_folder(tmp_path / "r1", round_=1), hub, round_=1, push_branch="rounds")

    assert hub.meta()["branches"]["rounds"] == result.commit_oid == hub.meta()["tags"]["round-1"]


# --- 7. transient errors --------------------------------------------------------------------------------------


def test_an_html_503_on_metadata_validation_is_retried(start_hub: Callable[..., Hub], tmp_path: Path) -> None:
    hub = start_hub(faults=("POST /api/validate-yaml 503-html 1",))

    result = push(built_folder(tmp_path / "out"), hub)

    assert [r for r in hub.requests() if "validate-yaml" in r] == [
        "POST /api/validate-yaml 503",
        "POST /api/validate-yaml 200",
    ]
    assert hub.meta()["tags"] == {"round-0": result.commit_oid}


def test_a_lasting_html_503_is_retried_within_the_bound_and_described_without_the_page(
    start_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    hub = start_hub(faults=(f"GET /api/datasets/{REPO}/refs 503-html 1", "POST /api/repos/create 503-html 9"))

    with pytest.raises(PublishError) as failed:
        push(built_folder(tmp_path / "out"), hub, max_retries=2)

    message = str(failed.value)
    assert "creating the dataset repo failed" in message and "after 3 attempts" in message
    assert "HTTP 503: an HTML error page" in message and "<html" not in message
    assert hub.requests().count("POST /api/repos/create 503") == 3


@pytest.mark.slow
def test_a_429_waits_as_long_as_retry_after_says(start_hub: Callable[..., Hub], tmp_path: Path) -> None:
    hub = start_hub(faults=(f"GET /api/datasets/{REPO}/refs 429:2 1",))
    started = time.monotonic()

    push(built_folder(tmp_path / "out"), hub)  # its own backoff would wait 0.01 s

    assert time.monotonic() - started >= 2.0
    assert f"GET /api/datasets/{REPO}/refs 429" in hub.requests()


def test_a_retry_after_beyond_the_bound_fails_at_once_saying_the_bound(
    start_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    hub = start_hub(faults=("POST /api/repos/create 429:3600 1",))
    started = time.monotonic()

    with pytest.raises(PublishError, match=r"asks to wait 3600 s .* longer than ssogen waits at once \(60 s\)"):
        push(built_folder(tmp_path / "out"), hub)

    assert time.monotonic() - started < 30


# --- 8. the card ----------------------------------------------------------------------------------------------


def test_card_after_merge_loads_the_merged_folder_and_lists_dropped_only_when_there_is_one(tmp_path: Path) -> None:
    shards = [built_folder(tmp_path / f"s{i}", first=10 * i, num_shards=2, shard_index=i) for i in range(2)]
    merged = tmp_path / "merged"
    merge(shards, merged)
    line = snippet_line((merged / "README.md").read_text())
    assert line.startswith(f'dpo = load_dataset("{merged}", "dpo")') and "dropped" not in line

    with_drops = [
        built_folder(tmp_path / f"d{i}", first=10 * i, dropped=1, num_shards=2, shard_index=i) for i in (0, 1)
    ]
    merge(with_drops, tmp_path / "merged2")
    assert snippet_line((tmp_path / "merged2" / "README.md").read_text()).endswith(", dropped")


def test_card_pushed_after_the_build_names_the_repo_and_the_folder_is_left_alone(hub: Hub, tmp_path: Path) -> None:
    folder = built_folder(tmp_path / "out")  # built without --push-to-hub: its card loads the folder
    local = (folder / "README.md").read_text()
    assert snippet_line(local).startswith(f'dpo = load_dataset("{folder}", "dpo")')

    result = push(folder, hub)

    card = hub.files(result.commit_oid)["README.md"].decode()
    assert card.count(f'load_dataset("{REPO}", ') == 3 and f'load_dataset("{folder}"' not in card
    assert card == local.replace(f'load_dataset("{folder}"', f'load_dataset("{REPO}"')
    assert (folder / "README.md").read_text() == local


def test_language_setting_reaches_the_card_metadata(tmp_path: Path) -> None:
    def languages(folder: Path) -> list[str]:
        return yaml.safe_load((folder / "README.md").read_text().split("---")[1])["language"]

    assert languages(built_folder(tmp_path / "default")) == ["en"]
    assert languages(built_folder(tmp_path / "two", language="fr, de")) == ["fr", "de"]
    with pytest.raises(UsageError, match=r"--language: 'french' is not a language code"):
        BuildConfig(language="french").validate()


# --- 9. re-push -----------------------------------------------------------------------------------------------


def test_pushing_a_rebuilt_folder_with_nothing_changed_succeeds_and_says_so(hub: Hub, tmp_path: Path) -> None:
    folder = built_folder(tmp_path / "out", push_to_hub=REPO)
    first = push(folder, hub)
    built_folder(tmp_path / "out", push_to_hub=REPO)  # the re-run build: same chunks, exported again

    assert "round-0 already holds this folder" in preflight(folder, hub)
    again = push(folder, hub)
    cli = run_cli("push", str(folder), REPO, env=cli_env(hub))

    assert again.already_published and again.commit_oid == first.commit_oid
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "already holds exactly this folder" in cli.stderr
    assert len(hub.commit_requests()) == 1 and hub.meta()["tags"] == {"round-0": first.commit_oid}
