"""The commands a page or a script shows, read as a shell reads them, and checked against the real parsers.

Used by tests/test_docs.py (the docs' ```bash blocks) and tests/test_examples.py (the examples' commands).
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

from ssogen.cli import build_config, make_parser

REPO = Path(__file__).resolve().parent.parent
_BASH_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", flags=re.S | re.M)
_SEPARATORS = {"&&", "||", ";", "|"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_VARIABLE = re.compile(r"\$\{?\w+\}?")


def bash_blocks(markdown: str) -> list[str]:
    return _BASH_BLOCK.findall(markdown)


def commands(script: str) -> list[list[str]]:
    """Every simple command of `script`: lines joined at a trailing backslash, comments dropped, split at
    ``&&``, ``||``, ``;`` and ``|``, with leading ``VAR=value`` assignments removed."""
    found: list[list[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unfinished quote: not a command line
            continue
        current: list[str] = []
        for word in [*words, ";"]:
            if word.endswith(";") and word != ";":  # `then;`-style: the word, then the end of a command
                current.append(word[:-1])
                word = ";"
            if word not in _SEPARATORS:
                current.append(word)
                continue
            while current and _ASSIGNMENT.match(current[0]):
                current.pop(0)
            if current:
                found.append(current)
            current = []
    return found


def ssogen_argv(command: list[str]) -> list[str] | None:
    """The arguments after ``ssogen`` (or ``python -m ssogen``), or None for another program."""
    if command[:1] == ["ssogen"]:
        return command[1:]
    if len(command) >= 3 and command[0].startswith("python") and command[1:3] == ["-m", "ssogen"]:
        return command[3:]
    return None


def train_sso_argv(command: list[str]) -> list[str] | None:
    """The arguments of ``python examples/train_sso.py``, or None for another command."""
    if len(command) >= 2 and command[0].startswith("python") and command[1].endswith("examples/train_sso.py"):
        return command[2:]
    return None


def placeholders(argv: list[str]) -> list[str]:
    """``...`` (flags left out) removed, and a shell variable (``$SLURM_ARRAY_TASK_ID``) read as a number."""
    return [_VARIABLE.sub("0", arg) for arg in argv if arg != "..."]


def check_ssogen(argv: list[str]) -> None:
    """Parse with the CLI (argparse exits on an unknown flag or a bad value); a `build` is also validated as
    `ssogen build` would validate it, when its --config file exists. Relative paths are the repository's."""
    try:
        args = make_parser().parse_args(placeholders(argv))
    except SystemExit as exc:
        if exc.code == 0:  # --help, --version
            return
        raise
    if args.command == "build" and (args.config is None or (REPO / args.config).is_file()):
        if args.config is not None:
            args.config = REPO / args.config
        build_config(args).validate()


@cache
def train_sso_parser():
    spec = importlib.util.spec_from_file_location("train_sso_shown", REPO / "examples" / "train_sso.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args
