"""Settings validation and the command line's handling of bad settings (exit 2, a message naming the flag)."""

from __future__ import annotations

import argparse

import pytest

from ssogen.cli import build_config, make_parser
from ssogen.config import BuildConfig
from ssogen.errors import UsageError
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


def test_help_of_every_command_renders_and_lists_every_build_setting():
    from dataclasses import fields

    parser = make_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"build", "bench", "audit", "inspect", "merge", "push"}
    for name, sub in commands.choices.items():
        text = sub.format_help()  # argparse %-formats help text: a stray "%" raises here
        if name in {"build", "bench"}:
            for f in fields(BuildConfig):
                assert f"--{f.name.replace('_', '-')}" in text, (name, f.name)


def test_cli_build_help_exits_0():
    result = run_cli("build", "--help")
    assert result.returncode == 0, result.stderr
    assert "--enforce-eager" in result.stdout and "20 %" in result.stdout


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
