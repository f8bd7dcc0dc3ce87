"""examples/: the build settings are real and valid, the Slurm script is valid bash whose every ssogen command parses,
and examples/README.md lists every example. No GPU, no cluster, no engine: the Slurm script runs against stand-ins
for `sbatch` and `ssogen` that record what they are given. (examples/train_sso.py: tests/test_training.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssogen.cli import build_config, make_parser
from ssogen.config import BuildConfig, load_yaml_settings
from tests.shown_commands import REPO, check_ssogen, commands, ssogen_argv

EXAMPLES = REPO / "examples"
BUILD_YAML = EXAMPLES / "build.yaml"
SLURM = EXAMPLES / "slurm_shards.sh"


# ---- build.yaml --------------------------------------------------------------------------------------------------


def test_build_yaml_holds_only_real_settings_and_validates():
    values = load_yaml_settings(BUILD_YAML)  # refuses an unknown key by name
    config = BuildConfig(**values).validate()
    # A 7B model on one GPU, in bfloat16.
    assert config.model == "Qwen/Qwen2.5-7B-Instruct"
    assert (config.dtype, config.tensor_parallel_size, config.executor) == ("bfloat16", 1, "local")
    assert config.queries and config.output == Path("round0")


def test_the_settings_build_yaml_shows_commented_out_are_real_too(tmp_path):
    """Its `# key: value` lines, switched on together, still validate: a user may switch on any of them."""
    lines = BUILD_YAML.read_text(encoding="utf-8").splitlines()
    switched = [re.sub(r"^# (\w+:)", r"\1", line) for line in lines]
    assert sum(a != b for a, b in zip(lines, switched, strict=True)) >= 5
    path = tmp_path / "all.yaml"
    path.write_text("\n".join(switched) + "\n", encoding="utf-8")
    config = BuildConfig(**load_yaml_settings(path)).validate()
    assert config.push_to_hub and config.private is True and config.model_revision


def test_build_yaml_through_the_command_line_and_flags_over_it(monkeypatch):
    monkeypatch.chdir(REPO)
    args = make_parser().parse_args(["build", "--config", "examples/build.yaml", "--limit", "50", "--output", "trial"])
    config = build_config(args).validate()
    from_file = BuildConfig(**load_yaml_settings(BUILD_YAML))
    assert (config.limit, config.output) == (50, Path("trial"))
    assert config.to_dict() | {"limit": None, "output": "round0"} == from_file.to_dict()


# ---- slurm_shards.sh ---------------------------------------------------------------------------------------------


def test_the_slurm_script_is_valid_bash():
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the Slurm example"
    result = subprocess.run([bash, "-n", str(SLURM)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    """`sbatch` and `ssogen` that append their arguments (as JSON) to a log; sbatch answers a job id."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for name, answer in (("sbatch", "print(4242)"), ("ssogen", "")):
        stub = bin_dir / name
        stub.write_text(
            f"#!{sys.executable}\nimport json, sys\n"
            f"with open({str(log)!r}, 'a') as f: f.write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n{answer}\n"
        )
        stub.chmod(0o755)
    return bin_dir, log


def _run(mode: str, tmp_path: Path, **env: str) -> list[list[str]]:
    """Run the script in `mode` (from the repository's root, as its usage says); the stand-ins' calls."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    if not bin_dir.exists():
        _stand_ins(tmp_path)
    log.unlink(missing_ok=True)
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **env}
    result = subprocess.run(
        ["bash", str(SLURM), mode], cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{mode}: {result.stdout}\n{result.stderr}"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_slurm_script_submits_an_array_of_shards_and_a_merge_that_waits_for_all_of_them(tmp_path):
    work = tmp_path / "work"
    calls = _run("submit", tmp_path, SHARDS="4", WORK=str(work), REPO_ID="my-org/sso-round0")
    assert [c[0] for c in calls] == ["sbatch", "sbatch"]
    shards, merge = calls
    assert "--array=0-3" in shards and "--gres=gpu:1" in shards and shards[-1] == "shard"
    assert "--dependency=afterok:4242" in merge and merge[-1] == "merge"
    assert any("REPO_ID=my-org/sso-round0" in arg for arg in merge)  # handed to the merge job
    assert (work / "logs").is_dir()


def test_every_ssogen_command_of_the_slurm_script_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    work = tmp_path / "work"
    for index in range(3):
        (work / "shards" / str(index)).mkdir(parents=True)
    config = {"CONFIG": "examples/build.yaml", "SHARDS": "3", "WORK": str(work)}
    shard = _run("shard", tmp_path, SLURM_ARRAY_TASK_ID="2", **config)
    merged = _run("merge", tmp_path, REPO_ID="my-org/sso-round0", **config)
    unpublished = _run("merge", tmp_path, **config)
    assert [c[1] for c in shard] == ["build"]
    assert [c[1] for c in merged] == ["merge", "inspect", "push"]
    assert [c[1] for c in unpublished] == ["merge", "inspect"]  # no REPO_ID: nothing published
    ran = [c[1:] for c in shard + merged]
    for argv in ran:
        try:
            check_ssogen(argv)
        except SystemExit as exc:
            raise AssertionError(f"the Slurm script runs a command the CLI rejects: ssogen {argv}") from exc
    build = make_parser().parse_args(ran[0])
    assert (build.num_shards, build.shard_index, build.output) == (3, 2, work / "shards" / "2")
    assert ran[1][1:] == [str(work / "shards" / str(i)) for i in range(3)] + ["--output", str(work / "merged")]
    assert ran[3] == ["push", str(work / "merged"), "my-org/sso-round0"]
    # Read as text, the script shows no ssogen command that the runs above did not check.
    written = {argv[0] for c in commands(SLURM.read_text()) if (argv := ssogen_argv(c))}
    assert written == {argv[0] for argv in ran}


# ---- examples/README.md ------------------------------------------------------------------------------------------


def test_the_examples_readme_lists_every_example_and_its_links_resolve():
    text = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    examples = sorted(p.name for p in EXAMPLES.iterdir() if p.is_file() and p.name != "README.md")
    assert examples, "examples/ holds examples"
    for name in examples:
        assert f"[`{name}`]({name})" in text, f"examples/README.md does not list {name}"
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (EXAMPLES / target).resolve().exists(), f"examples/README.md links a missing {target}"


@pytest.mark.parametrize("name", ["build.yaml", "slurm_shards.sh"])
def test_examples_show_no_machine_paths(name):
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    for forbidden in ("../shared", "/work/", "/home/", "/root/"):
        assert forbidden not in text
