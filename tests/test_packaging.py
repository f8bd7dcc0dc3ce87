"""The wheel ships the top-level prompts/ and principles/ and a non-editable install finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from ssogen import __version__

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_wheel_installed_alone_in_a_fresh_venv_runs_the_cli_on_its_bundled_files(wheel, tmp_path):
    """The wheel as a user installs it, away from the source tree: its own files, no editable link to the repo.

    Cheap: the fresh venv gets only the wheel (--no-deps); its dependencies (vLLM, torch, transformers) come from
    this test venv's site-packages through a .pth path line, which adds that folder but runs none of its own .pth
    files, so the editable install of ssogen there stays inactive.
    """
    from ssogen.inputs.library import load_library

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # This venv's pip installs into the fresh one (pip --python), so the fresh venv needs no pip of its own.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        check=True,
        timeout=300,
    )  # fmt: skip
    fresh = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                         text=True).strip())  # fmt: skip
    (fresh / "dev-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"

    def run(*argv: str) -> str:
        result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{argv}: {result.stderr[-3000:]}"
        return result.stdout

    where = run(str(python), "-c", "import ssogen; print(ssogen.__file__)").strip()
    assert Path(where).is_relative_to(fresh), where  # the installed wheel, not the source tree
    assert run("ssogen", "--version").strip() == f"ssogen {__version__}"
    listed = " ".join(run("ssogen", "features").split())
    assert all(feature.name in listed for feature in load_library(None))
    # A dry run renders the bundled templates with the bundled principles over the bundled queries.
    assert "dry-run: queries=2 " in run("ssogen", "build", "--dry-run", "--limit", "2")
    assert not (work / "ssogen-output").exists()
