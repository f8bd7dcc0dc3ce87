"""Replace the published part of a dataset folder as a whole: a kill leaves the previous export or the new one.

Owns: the staging folder ``.ssogen/export-new`` where an export is written beside the current one, the swap
that moves it in (``data/`` first, the card last, each one rename), and finishing or discarding, under the
folder's lock, a swap or a staging that a kill interrupted.

A staging folder is only ever swapped in once it is complete: its manifest (the names it holds) is written last,
atomically. Without a manifest it is an unfinished export and is removed; with one, the swap is finished (each
step is one rename and can be redone). ``data/`` is never half-written: it is renamed as a whole.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ssogen.files import atomic_write_bytes, fsync_dir, writing

logger = logging.getLogger(__name__)

STAGING = ".ssogen/export-new"
RETIRED = ".ssogen/export-old"
MANIFEST = "manifest.json"
# What an export owns at the top of the folder, in the order of the swap: the card, which lists data/'s
# configs, comes last. audit.yaml belongs to the audit of the previous export (`ssogen audit`): the new data/
# holds no audit, so it is retired with it.
VISIBLE = ("data", "plots", "dataset_info.json", "audit.yaml", "README.md")


def staging_dir(root: Path) -> Path:
    """An empty staging folder (an earlier unfinished one is removed)."""
    staging = root / STAGING
    with writing(staging):
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    return staging


def discard(root: Path) -> None:
    """Remove an unfinished staging folder (the previous export stays as it was)."""
    shutil.rmtree(root / STAGING, ignore_errors=True)


def commit(root: Path) -> None:
    """Swap the complete staging folder in, replacing the previous export."""
    staging = root / STAGING
    names = [name for name in VISIBLE if (staging / name).exists()]
    atomic_write_bytes(staging / MANIFEST, json.dumps(names).encode())
    _swap(root)


def recover(root: Path) -> None:
    """Finish a swap a kill interrupted, or remove an unfinished staging folder; called under the lock."""
    staging = root / STAGING
    if (staging / MANIFEST).is_file():
        logger.warning("finishing the export of %s that was interrupted while it was being swapped in", root)
        _swap(root)
    elif staging.exists():
        logger.info("removing an unfinished export in %s (interrupted; the previous export is untouched)", staging)
        discard(root)
    shutil.rmtree(root / RETIRED, ignore_errors=True)


def _swap(root: Path) -> None:
    staging, retired = root / STAGING, root / RETIRED
    names = json.loads((staging / MANIFEST).read_text())
    with writing(root, "swapping the new export in"):
        retired.mkdir(parents=True, exist_ok=True)
        for name in VISIBLE:
            new, current, old = staging / name, root / name, retired / name
            if name in names and not new.exists():
                continue  # moved in before the interruption
            if current.is_dir():
                shutil.rmtree(old, ignore_errors=True)
                current.rename(old)
            if name in names:
                new.replace(current)  # one rename: a file is replaced atomically
            elif current.exists():
                current.replace(old)
        fsync_dir(root)
    shutil.rmtree(retired, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
