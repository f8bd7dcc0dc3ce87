"""Settings validation and the command line's handling of bad settings (exit 2, a message naming the flag)."""

from __future__ import annotations

import argparse
import re

import pytest
import yaml

from ssogen.cli import bench_settings, build_config, make_parser
from ssogen.config import GROUPS, BuildConfig, recorded_settings
from ssogen.errors import UsageError
from ssogen.inputs.library import load_library
from ssogen.reading.audit import AuditOptions
from tests.conftest import REPO, run_cli


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("alpha", 1.5, "--alpha"),
        ("alpha", -0.1, "--alpha"),
        ("temperature", -1.0, "--temperature"),
        ("top_p", 0.0, "--top-p"),
        ("top_p", 1.2, "--top-p"),
        ("max_new_tokens", 0, "--max-new-tokens"),
        ("num_features", 0, "--num-features"),
        ("limit", 0, "--limit"),
        ("chunk_size", 0, "--chunk-size"),
        ("gpu_memory_utilization", 1.5, "--gpu-memory-utilization"),
        ("dtype", "int3", "--dtype"),
        ("block_size", 48, "--block-size"),
    ],
)
def test_validation_names_the_flag(field, value, flag):
    with pytest.raises(UsageError, match=flag):
        BuildConfig(**{field: value}).validate()


def test_max_new_tokens_must_leave_room_for_the_prompt():
    with pytest.raises(UsageError, match=r"--max-new-tokens .* --max-model-len"):
        BuildConfig(max_new_tokens=4096, max_model_len=4096).validate()


def test_an_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(UsageError, match=r"--output: .* is a file"):
        BuildConfig(output=target).validate()


def test_defaults_follow_the_reference_procedure():
    config = BuildConfig().validate()
    assert (config.temperature, config.top_p, config.max_new_tokens, config.num_features) == (0.7, 0.8, 2048, 2)


def test_flags_override_the_yaml_config_file(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("alpha: 0.3\nseed: 7\nmax-new-tokens: 64\n")
    args = make_parser().parse_args(["build", "--config", str(path), "--seed", "9"])
    config = build_config(args)
    assert (config.alpha, config.seed, config.max_new_tokens) == (0.3, 9, 64)


def test_unknown_keys_in_the_yaml_config_are_named(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("alpah: 0.3\n")
    args = make_parser().parse_args(["build", "--config", str(path)])
    with pytest.raises(UsageError, match="alpah"):
        build_config(args)


def test_cli_bad_setting_exits_2_with_a_message_and_no_traceback(tmp_path):
    result = run_cli("build", "--alpha", "2", "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "--alpha" in result.stderr and "between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_auto_dtype_runs_float32_on_a_cpu_without_native_bfloat16_and_an_explicit_dtype_is_kept():
    from ssogen.generation.engine import cpu_dtype

    assert cpu_dtype("auto", native_bf16=False) == "float32"
    assert cpu_dtype("auto", native_bf16=True) == "auto"
    assert cpu_dtype("bfloat16", native_bf16=False) == "bfloat16"
    assert cpu_dtype("float16", native_bf16=True) == "float16"


def test_help_of_every_command_renders_and_lists_every_setting_it_takes():
    from dataclasses import fields

    parser = make_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"build", "bench", "audit", "inspect", "merge", "push"}
    for name, sub in commands.choices.items():
        text = sub.format_help()  # argparse %-formats help text: a stray "%" raises here
        takes = (
            {f.name for f in fields(BuildConfig)} if name == "build" else bench_settings() if name == "bench" else ()
        )
        for setting in takes:
            assert f"--{setting.replace('_', '-')}" in text, (name, setting)


def test_build_help_shows_its_flags_in_groups_with_their_choices_and_one_default_each():
    result = run_cli("build", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    titles = [title for _, title in GROUPS]
    positions = [text.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions)  # every group, in the order a user needs them
    assert "{ranked,sampled,random}" in text and "{local,ray}" in text and "{auto,bfloat16,float16,float32}" in text
    flat = " ".join(text.split())
    assert flat.count("(default: 0.66)") == 1 and "(default: None)" not in flat
    assert not re.search(r"\(default: [^)]*\)[^-]*\(default:", flat.split("--alpha")[1].split("--seed")[0])
    # No figure measured on some machine belongs in --help (they go stale, and a user's machine differs).
    assert not re.search(r"\d+ ?(s|min|minutes|seconds)\b|\d+x slower|2-core|this project", flat)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["bench", "--push-to-hub", "org/name"], "--push-to-hub"),
        (["bench", "--executor", "ray"], "--executor"),
        (["bench", "--output", "somewhere"], "--output"),
        (["push", "folder", "org/name", "--revision", "dev"], "--revision"),
    ],
)
def test_a_command_refuses_a_flag_it_would_ignore_naming_it(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args(argv)
    assert exit_.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "enabling", "named", "needed"),
    [
        ({"push_branch": "dev"}, {"push_to_hub": "org/name"}, "--push-branch", "--push-to-hub"),
        ({"private": True}, {"push_to_hub": "org/name"}, "--private", "--push-to-hub"),
        ({"overwrite_round": True}, {"push_to_hub": "org/name"}, "--overwrite-round", "--push-to-hub"),
        ({"replicas": 4}, {"executor": "ray"}, "--replicas", "--executor ray"),
        ({"selection_temperature": 0.3}, {"feature_selection": "sampled"},
         "--selection-temperature", "--feature-selection sampled"),
        ({"principle_max_tokens": 100}, {"generate_principles": True},
         "--principle-max-tokens", "--generate-principles"),
        ({"model_revision": "v1"}, {"model": "org/policy"}, "--model-revision", "a Hub --model"),
    ],
)  # fmt: skip
def test_a_setting_nothing_would_read_is_refused_naming_what_it_needs(settings, enabling, named, needed):
    with pytest.raises(UsageError, match=re.escape(f"{named} is only read with {needed}")):
        BuildConfig(**settings).validate()
    BuildConfig(**settings, **enabling).validate()


def test_cli_exits_2_for_a_setting_nothing_would_read(tmp_path):
    result = run_cli("build", "--push-branch", "dev", "--output", str(tmp_path / "out"))
    assert result.returncode == 2 and "--push-branch is only read with --push-to-hub" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bench_reads_a_build_yaml_and_names_the_settings_it_does_not_take(tmp_path, caplog):
    path = tmp_path / "build.yaml"
    path.write_text("max_new_tokens: 64\npush_to_hub: org/name\nprivate: true\n")
    args = make_parser().parse_args(["bench", "--config", str(path)])
    config = build_config(args, bench_settings())
    assert config.max_new_tokens == 64 and config.push_to_hub is None and config.private is None
    assert "does not read these settings" in caplog.text and "private, push_to_hub" in caplog.text


def test_audit_leaves_the_repos_visibility_alone_unless_asked():
    parse = make_parser().parse_args
    assert not hasattr(parse(["audit", "f", "--push"]), "private")  # not given: AuditOptions' None
    assert AuditOptions(target="f").private is None
    assert parse(["audit", "f", "--push", "--private"]).private is True
    assert parse(["audit", "f", "--push", "--no-private"]).private is False


def test_the_settings_a_build_recorded_repeat_the_build_through_config(tmp_path):
    from ssogen.generation.plan import run_settings
    from ssogen.inputs.library import Templates
    from ssogen.inputs.models import ModelRef

    original = BuildConfig(
        queries="q.jsonl", limit=7, seed=3, alpha=0.5, max_new_tokens=99, feature_selection="sampled",
        selection_temperature=0.4, output=tmp_path / "round0", round=2, license="mit",
    )  # fmt: skip
    record = tmp_path / "ssogen.yaml"
    record.write_text(yaml.safe_dump(run_settings(original, ModelRef("m", "m", "r"), Templates(None))))
    repeated = build_config(make_parser().parse_args(["build", "--config", str(record)]))
    assert repeated == original
    assert build_config(make_parser().parse_args(["build", "--config", str(record), "--seed", "4"])).seed == 4


def test_a_build_yaml_pins_a_hub_model_to_the_commit_it_loaded():
    record = {"run": {"model_commit": "a" * 40}, "settings": {"model": "org/policy", "model_revision": "main"}}
    assert recorded_settings(record)["model_revision"] == "a" * 40
    assert recorded_settings({"run": {}, "settings": {"model": None}}).get("model_revision") is None


def test_features_lists_every_feature_of_the_bundled_library():
    result = run_cli("features")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for feature in load_library(None):
        assert feature.name in text and f"{feature.good} / {feature.bad}" in text
    assert "p = 0.2" in text  # Concision, the bound feature


def test_every_ssogen_command_shown_in_the_readme_parses():
    import re
    import shlex

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [
        part.strip()
        for block in blocks
        for line in block.splitlines()
        for part in line.split("#")[0].split("&&")
        if part.strip().startswith("ssogen ")
    ]
    assert len(commands) >= 15  # the README's build, bench, inspect, audit, push and merge examples
    parser = make_parser()
    for command in commands:
        # "ssogen bench ... --x" elides flags; a shell variable ($SLURM_ARRAY_TASK_ID) stands for a number.
        argv = [re.sub(r"\$\w+", "0", arg) for arg in shlex.split(command)[1:] if arg != "..."]
        try:
            parser.parse_args(argv)
        except SystemExit as exc:  # argparse exits on an unknown flag or a bad value
            raise AssertionError(f"the README shows a command the CLI rejects: {command}") from exc
