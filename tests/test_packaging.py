"""The wheel ships the top-level prompts/ and principles/ and a non-editable install finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(target), str(REPO)],
        check=True,
        timeout=600,
    )
    (path,) = target.glob("ssogen-*.whl")
    return path


def test_wheel_contains_every_prompt_and_principle_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("prompts", "principles"):
        for path in (REPO / folder).iterdir():
            assert f"ssogen/_resources/{folder}/{path.name}" in names, path
    assert "ssogen/data/default_queries.jsonl" in names


def test_installed_wheel_loads_its_own_library_and_templates(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path)
    code = (
        "from ssogen.inputs.library import load_library, Templates, resource_dir;"
        "from ssogen.inputs.sources import load_queries;"
        "print(resource_dir('prompts')); print(len(load_library(None))); Templates(None);"
        "print(len(load_queries(None).queries))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    where, features, queries = result.stdout.split()
    assert Path(where).is_relative_to(tmp_path)
    assert int(features) == 8 and int(queries) == 12  # the whole bundled query set ships in the wheel
