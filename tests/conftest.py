"""Shared fixtures: the bundled model, one real vLLM engine per test session, the project's own queries."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# `datasets` caches what it loaded by file names and times, which pytest's reused temporary paths can repeat
# across sessions: a fresh cache per session, so no test reads another session's tables.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="ssogen-tests-datasets-")
# The tests' queries: 48 tasks written for this project, in the Self-Instruct shape (instruction + instance input).
QUERIES = REPO / "tests" / "data" / "queries.jsonl"
# Fixtures that start (or need) a vLLM engine or a whole build: a test using one is `slow`, left out of
# `make test-fast`. Tests that start a build in a subprocess say so themselves (`pytest.mark.slow`).
ENGINE_FIXTURES = frozenset(
    {"engine", "built_run", "built_folder", "built_folder_seed1", "shard_folders", "audited", "reward_model"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("engine"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def bundled_model():
    from ssogen.inputs.models import bundled_model

    return bundled_model()


@pytest.fixture(scope="session")
def engine(bundled_model) -> Iterator:
    """One real engine for the in-process tests: float32 so scores compare tightly with transformers."""
    from ssogen.generation.engine import Engine, EngineSettings

    settings = EngineSettings(model=bundled_model.path, dtype="float32", max_model_len=2048)  # eager: the CPU default
    with Engine(settings) as eng:
        yield eng


@pytest.fixture(scope="session")
def tokenizer(bundled_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model.path)


# The settings of the shared build (tests/test_resume.py re-runs them after a kill and compares to the bit,
# so it runs in held batches; the continuous flow has its own tests in tests/test_flow.py).
BUILT_ARGS = (
    "--limit", "9", "--max-new-tokens", "48", "--chunk-size", "3", "--test-size", "0.25", "--enforce-eager",
    "--reproducible",
)  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def shared_build_started(request, tmp_path_factory) -> Iterator:
    """Start the shared build (`built_run`) before the session's first test when any test reads it.

    Its first half minute is vLLM's two processes importing vLLM on one core each, which overlaps the session
    engine's start and the tests that need neither; the build is in its own process, as a user runs it.
    """
    if not any("built_run" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("build") / "out"
    argv = [sys.executable, "-m", "ssogen", "build", "--queries", str(QUERIES), *BUILT_ARGS, "--output", str(out)]
    env = {**os.environ, "HF_TOKEN": "hf_" + "Z" * 34}  # must never reach the folder (tests/test_views.py)
    # Its output goes to files: a pipe nobody reads until the end would stall the build once full.
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, text=True, env=env, cwd=REPO)
        try:
            yield out, proc, stdout, stderr
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def built_run(shared_build_started):
    """One real CLI build of 9 shared queries in chunks of 3, shared by the tests that read a built folder."""
    out, proc, stdout, stderr = shared_build_started
    returncode = proc.wait(timeout=900)
    stdout.seek(0)
    stderr.seek(0)
    result = subprocess.CompletedProcess(proc.args, returncode, stdout.read(), stderr.read())
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="session")
def built_folder(built_run) -> Path:
    return built_run[0]


@pytest.fixture(scope="session")
def built_folder_seed1(tmp_path_factory, engine) -> Path:
    """The same 9 queries built with another seed (a second "round" to compare), in this process on the session's
    engine."""
    out = tmp_path_factory.mktemp("build-seed1") / "out"
    build_in_process(engine, "--queries", str(QUERIES), *BUILT_ARGS, "--seed", "1", "--output", str(out))
    return out


def build_in_process(engine, *argv: str):
    """`ssogen build ARGV` in this process on the session's engine (no engine start of its own): for the tests
    where the process boundary is not the point. Returns the build's summary."""
    from ssogen.cli import build_config, make_parser
    from ssogen.generation.pipeline import build

    args = make_parser().parse_args(["build", *argv])
    return build(build_config(args).validate(), overwrite=args.overwrite, engine_log=False, engine=engine)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 900):
    """Run `python -m ssogen ...` as a user would, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "ssogen", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def error_lines(stderr: str) -> list[str]:
    """The lines from `error:` on (vLLM's own shutdown logs may come before)."""
    lines = stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return lines[first:]


def make_record(i: int, **changes: object) -> dict:
    """A synthetic `sso` record (schema `ssogen.output.store.RECORD_SCHEMA`) for tests that need no engine."""
    from ssogen.generation.steer import ROLES

    row = {
        "prompt_id": f"{i:016x}",
        "prompt": f"question {i}",
        "system": "",
        "context": [],
        "features": ["Safety", "Accuracy"],
        "principle_source": "library",
        "system_pos": "be good",
        "system_neg": "be bad",
        "chosen": f"good {i}",
        "rejected": f"bad {i}",
        "original": f"plain {i}",
        **{f"logp_{r}": -1.0 - i / 10 - k / 7 for k, r in enumerate(ROLES)},
        **{f"tokens_{r}": 3 + i for r in ROLES},
        **{f"finish_{r}": "stop" for r in ROLES},
        **{f"degenerate_{r}": False for r in ROLES},
        "steering_in_user": False,
        "truncated": False,
        "weight": 0.6 + i / 50,
        "alpha": 0.5,
        "model": "m",
        "round": 0,
    }
    return {**row, **changes}


@pytest.fixture
def start_hub(tmp_path, monkeypatch) -> Iterator:
    """Factory: start the loopback Hub server, tests/hub_server.py (see tests/hubtest.py); stopped after the test."""
    from tests.hubtest import HubServers

    with HubServers(tmp_path, monkeypatch) as servers:
        yield servers.start


@pytest.fixture
def hub(start_hub):
    return start_hub()


# --- the trainers' tests (tests/test_trainers.py, tests/test_training.py) ---------------------------------------


# A short, silent, CPU-only, float32 run that writes nothing but its output folder. No truncation: TRL would
# otherwise drop rows (DPO: prompts that fill max_length; reward: any longer pair), and every row must go through.
TRAINER_ARGS = {
    "max_steps": 2,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_length": None,
    "logging_steps": 1,
    "report_to": [],
    "save_strategy": "no",
    "use_cpu": True,
    "bf16": False,
    "fp16": False,
    "gradient_checkpointing": False,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
    "seed": 0,
}


@pytest.fixture
def offline_training(monkeypatch):
    """No network, no telemetry, no experiment trackers."""
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "WANDB_DISABLED": "true",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def trl_tokenizer(bundled_model):
    """A private copy of the bundled tokenizer per module: the trainers set `pad_token` on the one they are given."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_config(tokenizer, **extra):
    """A two-layer Llama of width 32 with the bundled tokenizer's vocabulary: the trainers' tests' policy."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )
