"""The user's Hub model: fetched as vLLM and transformers choose, each file once, at one commit a resume keeps.

The loopback Hub (tests/hub_server.py) serves model repos made from the bundled model's files, driven by the real
`huggingface_hub` client, transformers and vLLM's own download code (`HF_ENDPOINT` in the environment of the
processes started here). One real build runs through the CLI; the other repo layouts are checked through the steps
a build runs before its engine starts (planning, then `download_weights`), without an engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ssogen.config import BuildConfig
from ssogen.generation.plan import engine_settings, recorded_commit, run_settings
from ssogen.inputs.library import Templates
from ssogen.inputs.models import ModelRef
from ssogen.output.card import generating_model
from tests.conftest import REPO, run_cli
from tests.hubtest import TOKEN, Hub

ORG = "ssogen-test"
# What the bundled model's folder holds besides its weights: config, generation config, tokenizer, chat template.
BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
REMOTE_CODE = '''"""The repo's own config class: transformers runs it only with trust_remote_code."""

from transformers import LlamaConfig


class SmolConfig(LlamaConfig):
    pass
'''
# What a build runs before its engine starts (plan, engine settings, weights), for each model given as
# MODEL REVISION TRUST_REMOTE_CODE OUTPUT; prints each model's commit.
PLAN_AND_FETCH = """
import sys
from ssogen.config import BuildConfig
from ssogen.generation.engine import download_weights
from ssogen.generation.plan import engine_settings, plan_build

args = sys.argv[1:]
for model, revision, trust, output in zip(args[::4], args[1::4], args[2::4], args[3::4]):
    config = BuildConfig(model=model, model_revision=revision, trust_remote_code=trust == "1", output=output)
    plan = plan_build(config, load_queries_now=False)
    settings = engine_settings(config, plan.model)
    download_weights(settings.model, settings.revision)
    print(model, plan.model.commit, flush=True)
"""


@pytest.fixture(scope="module")
def repo_files(bundled_model, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """The model repos' files, made from the bundled model: repo name -> {path in the repo: file}.

    smol: the bundled folder as is, plus the same weights as .bin (a repo shipping both formats) and a README;
    smol-remote: its config names a config class in the repo's own configuration_smol.py;
    smol-bin: the weights only as pytorch_model.bin;
    smol-mistral: Mistral's layout, consolidated.safetensors beside the same weights in two indexed shards.
    """
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(bundled_model.path)
    made = tmp_path_factory.mktemp("model-repos")
    base = {name: folder / name for name in BASE_FILES}
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    torch.save(tensors, made / "pytorch_model.bin")
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, made / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (made / "model.safetensors.index.json").write_text(json.dumps(index))
    (made / "README.md").write_text("# smol\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_smol.SmolConfig"}
    (made / "remote").mkdir()
    (made / "remote" / "config.json").write_text(json.dumps(config))
    (made / "configuration_smol.py").write_text(REMOTE_CODE)
    return {
        "smol": {**base, "model.safetensors": weights, "pytorch_model.bin": made / "pytorch_model.bin",
                 "README.md": made / "README.md"},
        "smol-remote": {**base, "config.json": made / "remote" / "config.json", "model.safetensors": weights,
                        "configuration_smol.py": made / "configuration_smol.py"},
        "smol-bin": {**base, "pytorch_model.bin": made / "pytorch_model.bin"},
        "smol-mistral": {**base, "consolidated.safetensors": weights,
                         **{shard: made / shard for shard in shards},
                         "model.safetensors.index.json": made / "model.safetensors.index.json"},
    }  # fmt: skip


def hub_env(hub: Hub, home: Path) -> dict[str, str]:
    """The environment of a process that talks to the loopback Hub, with a Hugging Face cache of its own."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


def tag(hub: Hub, repo_id: str, name: str, revision: str) -> None:
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.url, token=TOKEN).create_tag(repo_id, tag=name, revision=revision)


def downloads(gets: Counter[str]) -> dict[str, set[str]]:
    """File downloads by revision: {revision: {path}}. (Transformers and vLLM also ask for files a repo may not
    have, such as tokenizer.model or params.json: those answer 404 and download nothing.)"""
    by_revision: dict[str, set[str]] = {}
    for key in gets:
        revision, _, path = key.partition("/")
        by_revision.setdefault(revision, set()).add(path)
    return by_revision


# --- without an engine ---------------------------------------------------------------------------------------


@pytest.mark.slow  # three model repos through the loopback Hub and vLLM's weight download
def test_each_repo_layout_fetches_what_vllm_and_transformers_load_once_at_the_resolved_commit(
    start_hub, repo_files, tmp_path
):
    layouts = {name: repo_files[name] for name in ("smol-remote", "smol-bin", "smol-mistral")}
    hub = start_hub(models={f"{ORG}/{name}": files for name, files in layouts.items()})
    for name in layouts:
        tag(hub, f"{ORG}/{name}", "v1", "main")
    args = []
    for name in layouts:
        args += [f"{ORG}/{name}", "v1", "1" if name == "smol-remote" else "0", str(tmp_path / f"out-{name}")]
    env = {**os.environ, **hub_env(hub, tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-c", PLAN_AND_FETCH, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    commits = dict(line.split() for line in result.stdout.splitlines())

    # Planning reads config and tokenizer; generation_config.json is read by vLLM when an engine starts.
    tokenizer = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    expected = {
        # The repo's code comes with its config; the weights as in the plain layout.
        "smol-remote": {"config.json", "configuration_smol.py", *tokenizer, "model.safetensors"},
        # No safetensors: vLLM falls back to the .bin.
        "smol-bin": {"config.json", *tokenizer, "pytorch_model.bin"},
        # Mistral's layout: the consolidated file alone, never the same weights again as shards.
        "smol-mistral": {"config.json", *tokenizer, "consolidated.safetensors"},
    }
    for name, files in expected.items():
        repo_id = f"{ORG}/{name}"
        assert commits[repo_id] == hub.model_meta(repo_id)["tags"]["v1"]
        gets = hub.file_gets(repo_id)
        assert downloads(gets) == {commits[repo_id]: files}, name  # all at the commit, never at "v1"
        assert set(gets.values()) == {1}, gets  # each file once


def test_a_resume_loads_the_commit_its_folder_recorded_for_the_same_model_and_revision(tmp_path):
    commit = "c" * 40
    config = BuildConfig(model="org/policy", model_revision="v1", output=tmp_path)
    settings = run_settings(config, ModelRef("org/policy", "org/policy", commit, commit), Templates(None))
    (tmp_path / "ssogen.yaml").write_text(yaml.safe_dump(settings))

    assert recorded_commit(config) == commit
    # Another model, another revision asked for, or the bundled model: nothing is pinned.
    assert recorded_commit(BuildConfig(model="org/other", model_revision="v1", output=tmp_path)) is None
    assert recorded_commit(BuildConfig(model="org/policy", model_revision="v2", output=tmp_path)) is None
    assert recorded_commit(BuildConfig(model="org/policy", output=tmp_path)) is None
    assert recorded_commit(BuildConfig(output=tmp_path)) is None
    (tmp_path / "ssogen.yaml").write_text("run: [unclosed")
    assert recorded_commit(config) is None  # a damaged record pins nothing; the folder check reports it


def test_vllm_is_given_a_hub_models_id_and_commit_and_a_local_model_its_folder(bundled_model):
    commit = "d" * 40
    hub_model = engine_settings(BuildConfig(max_model_len=2048), ModelRef("org/policy", "org/policy", commit, commit))
    assert (hub_model.model, hub_model.revision) == ("org/policy", commit)
    local = engine_settings(BuildConfig(max_model_len=2048), bundled_model)
    assert (local.model, local.revision) == (bundled_model.path, None)


def test_the_cards_snippets_load_a_hub_model_at_its_commit_and_a_local_model_by_its_full_path(tmp_path, monkeypatch):
    commit = "e" * 40
    hub_run = run_settings(
        BuildConfig(model="org/policy", model_revision="v1"),
        ModelRef("org/policy", "org/policy", commit, commit),
        Templates(None),
    )
    assert generating_model(hub_run) == {
        "id": "org/policy", "revision": commit, "note": "the commit that generated this data", "asked": "v1",
    }  # fmt: skip
    folder = tmp_path / "my-model"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # the user names the folder relative to where they are
    local_run = run_settings(
        BuildConfig(model="my-model"), ModelRef("my-model", "my-model", "local:x"), Templates(None)
    )
    assert local_run["settings"]["model"] == str(folder)
    assert generating_model(local_run)["id"] == str(folder)
    # An older build recorded the folder as given: a placeholder, never a path that means nothing elsewhere.
    older = {**local_run, "settings": {**local_run["settings"], "model": "my-model"}}
    assert generating_model(older)["id"] == "path/to/my-model"


# --- one real build --------------------------------------------------------------------------------------------


@pytest.mark.engine
def test_a_hub_model_at_a_tag_is_fetched_once_built_recorded_at_its_commit_and_resumed_there(
    start_hub, repo_files, tmp_path
):
    from huggingface_hub import HfApi

    repo_id = f"{ORG}/smol"
    hub = start_hub(models={repo_id: repo_files["smol"]})
    tag(hub, repo_id, "v1", "main")
    first = hub.model_meta(repo_id)["tags"]["v1"]
    out = tmp_path / "out"
    env = hub_env(hub, tmp_path / "hf")
    build = ("build", "--model", repo_id, "--model-revision", "v1", "--limit", "2", "--max-new-tokens", "16")

    result = run_cli(*build, "--output", str(out), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    gets = hub.file_gets(repo_id)
    # Safetensors, not the .bin beside them; config, tokenizer and generation config; each once, at the commit.
    # README.md too: vLLM's tokenizer loads from a snapshot of every file of the repo but weights and media
    # (vllm.transformers_utils.repo_utils.get_non_weight_snapshot_path).
    needed = {*BASE_FILES, "model.safetensors", "README.md"}
    assert downloads(gets) == {first: needed}, hub.requests()
    assert set(gets.values()) == {1}, gets
    # vLLM also reads safetensors headers through the Hub (ranged reads of the first 100 kB), which fetch no file.
    assert {key.rsplit("/", 1)[1] for key in hub.file_gets(repo_id, status="206")} <= {"model.safetensors"}
    record = yaml.safe_load((out / "ssogen.yaml").read_text())
    assert record["run"]["model_commit"] == record["run"]["model_revision"] == first
    assert record["settings"]["model_revision"] == "v1"  # what was asked, beside what it named
    card = (out / "README.md").read_text()
    assert f'model_id, revision = "{repo_id}", "{first}"' in card
    assert f"at commit [`{first}`](https://huggingface.co/{repo_id}/tree/{first}) (asked for `v1`)" in card

    # Upstream moves on: a new commit on main changes the config, and the tag v1 is moved onto it.
    api = HfApi(endpoint=hub.url, token=TOKEN)
    config = json.loads(repo_files["smol"]["config.json"].read_text())
    config["max_position_embeddings"] = 4096
    api.upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json", repo_id=repo_id)
    api.delete_tag(repo_id, tag="v1")
    tag(hub, repo_id, "v1", "main")
    moved = hub.model_meta(repo_id)["tags"]["v1"]
    assert moved != first
    seen = len(hub.requests())

    # The same command resumes the finished build at the commit it recorded: neither the tag nor the new
    # commit is asked for, and the folder is not refused as built with other settings.
    again = run_cli(*build, "--output", str(out), env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 resumed" in again.stderr and f"at commit {first} (as the build in {out} recorded)" in again.stderr
    assert not [r for r in hub.requests()[seen:] if moved in r or "/revision/v1" in r]
    assert yaml.safe_load((out / "ssogen.yaml").read_text())["run"]["model_commit"] == first

    # A new folder asks the Hub again and meets the new commit: what the resume was kept from.
    fresh = run_cli(*build, "--dry-run", "--output", str(tmp_path / "fresh"), env=env)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert f"at commit {moved} (what v1 names now)" in fresh.stderr
    assert downloads(hub.file_gets(repo_id, since=seen)) == {moved: {"config.json"}}  # only what changed


def test_a_settings_file_naming_revision_is_refused_and_a_builds_old_record_keeps_its_push_branch(tmp_path):
    from ssogen.config import load_yaml_settings
    from ssogen.errors import UsageError

    written = tmp_path / "mine.yaml"
    written.write_text("model: org/policy\nrevision: v1\n")
    with pytest.raises(UsageError, match=r"push_branch for the Hub branch .* model_revision for the branch, tag"):
        load_yaml_settings(written)
    # A build's own record from before the rename: there `revision` was the push branch.
    record = tmp_path / "ssogen.yaml"
    record.write_text(yaml.safe_dump({"run": {}, "settings": {"push_to_hub": "org/prefs", "revision": "dev"}}))
    assert load_yaml_settings(record) == {"push_to_hub": "org/prefs", "push_branch": "dev"}


def test_ray_replicas_plan_with_the_commit_the_build_loads_not_the_branch_it_asked_for():
    from ssogen.generation.distributed import _plain

    commit = "f" * 40
    driver = BuildConfig(model="org/policy", model_revision="main", executor="ray", replicas=2)
    replica = BuildConfig(**_plain(driver, commit)).validate()  # what `Replica.__init__` plans from
    assert (replica.model, replica.model_revision, replica.executor) == ("org/policy", commit, "local")
    assert BuildConfig(**_plain(BuildConfig(executor="ray"))).model_revision is None  # the bundled model


def test_a_revision_the_hub_model_lacks_is_refused_naming_it_and_no_file_is_fetched(start_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from ssogen.errors import UsageError
    from ssogen.inputs.models import resolve_model

    config = tmp_path / "config.json"
    config.write_text("{}")
    hub = start_hub(models={f"{ORG}/tiny": {"config.json": config}})
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # API calls only: resolving downloads nothing
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    head = hub.model_meta(f"{ORG}/tiny")["branches"]["main"]
    assert resolve_model(f"{ORG}/tiny").commit == head  # no revision: the default branch
    with pytest.raises(UsageError, match=f"--model-revision: {ORG}/tiny has no branch, tag or commit 'v9'"):
        resolve_model(f"{ORG}/tiny", "v9")
    with pytest.raises(UsageError, match=f"--model: the Hub has no model {ORG}/absent"):
        resolve_model(f"{ORG}/absent")
    assert not hub.file_gets(f"{ORG}/tiny")
