"""The documentation site: it builds strict (no broken link or anchor, no page outside the nav), every command it
shows parses with today's CLI, and the command line page names every command. No engine: a few seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from ssogen.cli import make_parser
from ssogen.config import GROUPS
from tests.shown_commands import (
    REPO,
    bash_blocks,
    check_ssogen,
    commands,
    placeholders,
    ssogen_argv,
    train_sso_argv,
    train_sso_parser,
)

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README = REPO / "README.md"


class _Loader(yaml.SafeLoader):
    """mkdocs.yml as data; its `!relative`-style tags (none today) would read as plain values."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _nav_pages(entries) -> list[str]:
    pages: list[str] = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: mkdocs.yml turns a broken link or anchor, a page missing from the nav and a nav
    entry without its page into warnings, and strict fails the build on any warning."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's notice about MkDocs 2.0, not a warning of ours
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    # The repository files the pages link to are in the site (docs/hooks/repo_files.py).
    assert (tmp_path / "site" / "examples" / "build.yaml").is_file()


def test_the_config_is_strict_and_every_page_is_in_the_nav():
    config = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    assert config["strict"] is True
    assert config["theme"]["name"] == "material"
    validation = config["validation"]
    assert validation["nav"]["omitted_files"] == validation["links"]["not_found"] == "warn"
    assert validation["links"]["anchors"] == "warn"
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page is twice in the nav"
    assert sorted(nav) == sorted(p.name for p in PAGES)
    assert nav[0] == "index.md"
    for page in ("install.md", "gpu.md", "training.md"):  # the colleagues' pages are found from the nav
        assert page in nav


def _shown(pages=PAGES) -> list[tuple[str, list[str]]]:
    return [
        (page.name, command)
        for page in pages
        for block in bash_blocks(page.read_text(encoding="utf-8"))
        for command in commands(block)
    ]


@pytest.mark.slow
def test_every_ssogen_command_shown_in_the_docs_parses(monkeypatch):
    monkeypatch.chdir(REPO)  # `--config examples/build.yaml` as a user in the repository's root types it
    shown = [(page, argv) for page, command in _shown([*PAGES, README]) if (argv := ssogen_argv(command)) is not None]
    assert len(shown) >= 30  # every page's build, inspect, audit, push, merge and bench examples
    assert {argv[0] for _, argv in shown} >= {"build", "inspect", "audit", "merge", "push", "bench", "features"}
    for page, argv in shown:
        try:
            check_ssogen(argv)
        except SystemExit as exc:  # argparse exits on an unknown flag or a bad value
            raise AssertionError(f"docs/{page} shows a command the CLI rejects: ssogen {' '.join(argv)}") from exc
        except Exception as exc:
            raise AssertionError(f"docs/{page} shows a build the CLI refuses: ssogen {' '.join(argv)}: {exc}") from exc


def test_every_training_command_shown_in_the_docs_parses():
    shown = [
        (page, argv) for page, command in _shown([*PAGES, README]) if (argv := train_sso_argv(command)) is not None
    ]
    assert shown, "the docs show how to run examples/train_sso.py"
    parse = train_sso_parser()
    for page, argv in shown:
        try:
            parse(placeholders(argv))
        except SystemExit as exc:
            raise AssertionError(f"docs/{page} shows a train_sso.py command it rejects: {' '.join(argv)}") from exc


def test_the_command_line_page_names_every_command_and_builds_groups():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `ssogen (\w+)` \|", text, flags=re.M))
    subcommands = next(a for a in make_parser()._actions if a.dest == "command").choices
    missing = sorted(set(subcommands) - listed)
    assert not missing, f"docs/cli.md does not list: {', '.join(missing)}"
    for _, title in GROUPS:  # the groups of `ssogen build --help`, by their titles
        assert f"**{title}**" in text, f"docs/cli.md does not name the group {title!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_show_no_development_or_machine_paths(page):
    text = page.read_text(encoding="utf-8")
    for forbidden in ("../shared", "/work/", "/home/", "/root/", "/tmp/work"):
        assert forbidden not in text, f"docs/{page.name} shows {forbidden!r}"
    assert "](../README.md" not in text, f"docs/{page.name} links the README, which is not part of the site"


def test_the_readme_links_resolve_and_its_front_door_commands_are_the_makefiles():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), f"README.md links a missing {target}"
    targets = set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    shown = set(re.findall(r"^make ([a-z-]+)", text, flags=re.M))
    assert shown >= {"run", "test", "test-fast"} and shown <= targets, shown
