"""The package's layout: every import points down the layers `ssogen.LAYERS` declares, never up or sideways."""

from __future__ import annotations

import ast
from pathlib import Path

import ssogen

PACKAGE = Path(ssogen.__file__).parent
BASE = {"__init__", "errors", "files", "hubmeta", "config"}  # modules every layer may use
TOP = {"cli", "__main__"}  # the command line sits above every package


def layer_of(module: str) -> tuple[int, str]:
    """(rank, name) of the layer an ``ssogen...`` module belongs to."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else ""
    if head in ("", *BASE):
        return 0, "base"
    if head in TOP:
        return len(ssogen.LAYERS) + 1, "cli"
    assert head in ssogen.LAYERS, f"{module} belongs to no layer of ssogen.LAYERS"
    return ssogen.LAYERS.index(head) + 1, head


def imported_modules(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, module) of every ``ssogen`` import in a file, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("ssogen")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ssogen"):
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{name}:{node.lineno}: relative import; spell out the ssogen module")
    return found


def modules() -> list[tuple[Path, str]]:
    return [
        (path, "ssogen." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "_resources" not in path.parts
    ]


def test_every_module_imports_only_its_own_layer_and_the_layers_below():
    upward = []
    for path, name in modules():
        rank, layer = layer_of(name)
        for line, target in imported_modules(path, name):
            target_rank, target_layer = layer_of(target)
            if target_layer != layer and target_rank >= rank:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({layer}) imports {target} ({target_layer})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_every_subpackage_says_what_it_owns_and_what_it_may_import():
    for layer in ssogen.LAYERS:
        init = PACKAGE / layer / "__init__.py"
        assert init.is_file(), f"ssogen/{layer}/ is declared in ssogen.LAYERS but missing"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"ssogen/{layer}/__init__.py does not say what it may import"


def test_every_module_has_a_docstring():
    missing = [name for path, name in modules() if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, missing


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ssogen.generation.engine import Engine\n")
    ((line, target),) = imported_modules(bad, "ssogen.output.bad")
    assert layer_of(target)[0] > layer_of("ssogen.output.bad")[0] and line == 2
