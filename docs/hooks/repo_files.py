"""mkdocs hook: the repository files the pages link to (examples, principles, prompts, ...) become site files.

A page links to them as GitHub reads the repository (``../examples/build.yaml`` from ``docs/``). mkdocs resolves
that link against the docs folder, where nothing matches, and `strict` fails it. Here each such file is added under
the same relative name (``../examples/build.yaml``), written into the site at ``examples/build.yaml``: the link
then resolves, its target is copied into the site, and a link to a file that does not exist still fails the build.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files, InclusionLevel

# Repository folders and files, relative to its root, that the pages may link to.
SHARED = ("examples", "principles", "prompts", "LICENSE", "pyproject.toml", "Makefile")


def on_files(files: Files, config) -> Files:
    root = Path(config["docs_dir"]).resolve().parent
    for name in SHARED:
        path = root / name
        paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for item in paths:
            if not item.is_file() or "__pycache__" in item.parts or item.suffix == ".md":
                continue  # a Markdown file here would become a page outside the nav
            relative = item.relative_to(root).as_posix()
            # Included explicitly: the default exclusion of hidden names (".*") would match the "..".
            file = File.generated(config, f"../{relative}", abs_src_path=str(item), inclusion=InclusionLevel.INCLUDED)
            file.dest_uri = relative
            files.append(file)
    return files
