"""Write the finished dataset folder in the Hub's layout, from the saved chunks.

Owns: ``data/<config>/<split>-00000-of-00001.parquet`` for every view, the LLaMA-Factory
``dataset_info.json`` and the dataset card ``README.md``. Everything here is derived from the chunks and
the settings, so running it twice gives the same folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from ssogen.card import render_card
from ssogen.library import Templates
from ssogen.store import OutputFolder, atomic_write_bytes
from ssogen.views import build_views, llamafactory_dataset_info

PLOTS_DIR = "plots"


def export_folder(
    folder: OutputFolder,
    records: pa.Table,
    dropped: pa.Table,
    *,
    templates: Templates,
    settings: dict[str, Any],
    seed: int,
    test_size: float,
    license: str = "other",
    repo_id: str | None = None,
    parent: str | None = None,
    card_plots: bool = False,
) -> dict[str, dict[str, int]]:
    """Write every view, dataset_info.json and the card; returns {config: {split: rows}}."""
    views = build_views(records, dropped, seed=seed, test_size=test_size)
    data = folder.root / "data"
    # A config's splits may change between runs (a test split may appear or vanish): rewrite each whole.
    for stale in data.iterdir() if data.is_dir() else []:
        if stale.is_dir() and stale.name not in views:
            shutil.rmtree(stale)
    counts: dict[str, dict[str, int]] = {}
    for name, splits in views.items():
        config_dir = data / name
        for old in config_dir.glob("*.parquet"):
            if old.name.split("-")[0] not in splits:
                old.unlink()
        counts[name] = {}
        for split, table in splits.items():
            folder.write_config(name, split, table)
            counts[name][split] = table.num_rows
    written = data / "sso_reference"
    reference = {
        split: sorted(p.relative_to(folder.root).as_posix() for p in written.glob(f"{split}-*.parquet"))
        for split in counts.get("sso_reference", {})
    }
    _write_text(folder.root / "dataset_info.json", json.dumps(llamafactory_dataset_info(reference), indent=2) + "\n")
    plots: list[str] = []
    stale_plots = folder.root / PLOTS_DIR
    if stale_plots.is_dir():
        shutil.rmtree(stale_plots)
    if card_plots:
        from ssogen.inspect import load_build, render_plots

        written = render_plots(load_build(str(folder.root)), folder.root / PLOTS_DIR)
        plots = [f"{PLOTS_DIR}/{path.name}" for path in written.values()]
    card = render_card(
        templates,
        records=records,
        dropped=dropped,
        counts=counts,
        settings=settings,
        repo_id=repo_id,
        parent=parent,
        license=license,
        plots=plots,
    )
    _write_text(folder.root / "README.md", card)
    return counts


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
