"""The summary of a build (and of its audit) as tables: formatted once, printed with rich or put in the HTML page.

Owns: `Section` (a title, columns and rows of formatted cells), the summary of one build (`sections`), two
builds side by side (`compare_sections`), and their rich rendering for the terminal (`summary_table`,
`compare_table`). Every figure comes from `ssogen.card.summarize` (and `ssogen.audit_summary` for an audit), so
the dataset card, the terminal and the report agree; the only figure computed here is the per-role count of
answers cut by the token limit, which the card does not have. Tables and HTML are filled from the same cells,
so they always print the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ssogen.card import ROLES
from ssogen.readback import Build, distinct_names, ordered_configs, ordered_splits, single_value

STATS = ("min", "p25", "median", "p75", "max", "mean")
ROLE_SIGN = {"chosen": "y+", "rejected": "y-", "original": "y°"}
MISSING = "–"


@dataclass
class Section:
    """One table of the summary: a title, column names and rows of formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    empty: str = ""  # shown instead of the table when there are no rows
    note: str = ""


def _text(value: Any) -> str:
    return MISSING if value is None else str(value)


def _f4(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4f}"


def _f1(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f}"


def _int(value: float | None) -> str:
    return MISSING if value is None else str(round(value))


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else MISSING


def _truncated_rows(build: Build) -> int:
    return round(build.summary["truncated_share"] * build.kept)


def _quantity_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, quantiles) of W, π̃ per role and the y+ − y- gap."""
    return [
        ("W", summary["weight"]),
        *((f"π̃({ROLE_SIGN[r]}|x) {r}", summary["pi"][r]) for r in ROLES),
        ("π̃(y+) − π̃(y-)", summary["pi_gap"]),
    ]


def _length_format(stat: str) -> Any:
    return _int if stat in ("min", "max") else _f1


def _overview(build: Build) -> list[tuple[str, str]]:
    run = build.run
    return [
        ("source", build.source),
        ("model", _text(run.get("model") or single_value(build.sso, "model"))),
        ("round", _text(build.round)),
        ("seed", _text(build.seed)),
        ("alpha", _text(run.get("alpha") if "alpha" in run else single_value(build.sso, "alpha"))),
        ("max new tokens", _text(run.get("max_new_tokens"))),
        ("queries kept", str(build.kept)),
        ("queries dropped", str(build.summary["dropped"])),
        (
            "rows truncated",
            f"{_truncated_rows(build)} of {build.kept} ({_pct(_truncated_rows(build), build.kept)})"
            if build.kept
            else MISSING,
        ),
    ]


def sections(build: Build) -> list[Section]:
    """The summary of one build as formatted tables (the terminal and the HTML both print these)."""
    s = build.summary
    splits = list(ordered_splits({sp: 0 for c in build.counts.values() for sp in c}))
    config_rows = []
    for config, counts in build.counts.items():
        known = [n for n in counts.values() if n is not None]
        cells = [_rows_cell(counts[sp]) if sp in counts else MISSING for sp in splits]
        config_rows.append([config, *cells, str(sum(known)) if known else MISSING])
    total = build.kept + s["dropped"]
    out = [
        Section("Build", ["", build.label], [list(r) for r in _overview(build)]),
        Section("Rows per config and split", ["config", *splits, "total"], config_rows, empty="No Parquet files."),
        Section(
            "Drop reasons",
            ["reason", "queries", "share of all queries"],
            [[reason, str(n), _pct(n, total)] for reason, n in s["drop_reasons"].items()],
            empty="No query was dropped.",
        ),
    ]
    if not build.kept:
        return out
    out += [
        Section(
            "Features",
            ["feature", "queries", "share of kept"],
            [[name, str(n), _pct(n, build.kept)] for name, n in s["features"].items()],
            empty="No features recorded.",
        ),
        Section(
            "W and π̃ (mean per-token log-prob under the bare query)",
            ["", *STATS],
            [[label, *(_f4(q.get(k)) for k in STATS)] for label, q in _quantity_rows(s)],
        ),
        Section(
            "Answer lengths (tokens)",
            ["role", *STATS, "cut by the token limit"],
            [
                [
                    f"{role} ({ROLE_SIGN[role]})",
                    *(_length_format(k)(s["tokens"][role].get(k)) for k in STATS),
                    str(build.cut[role]),
                ]
                for role in ROLES
            ],
            note=f"Rows with any answer cut by the token limit (truncated): {_pct(_truncated_rows(build), build.kept)}"
            f" ({_truncated_rows(build)} of {build.kept}).",
        ),
    ]
    return out


def _delta(a: float | None, b: float | None, fmt: str) -> str:
    if a is None or b is None:
        return MISSING
    return format(b - a, fmt)


def compare_sections(a: Build, b: Build) -> list[Section]:
    """The same figures of two builds side by side, with the difference B − A."""
    head_a, head_b = distinct_names(a, b)
    columns = ["", head_a, head_b, "Δ (B − A)"]
    sa, sb = a.summary, b.summary

    overview = []
    for (key, va), (_, vb) in zip(_overview(a), _overview(b), strict=True):
        overview.append([key, va, vb, ""])
    for key in ("queries kept", "queries dropped"):
        row = next(r for r in overview if r[0] == key)
        row[3] = _delta(float(row[1]), float(row[2]), "+.0f")
    share_a = sa["truncated_share"] * 100 if a.kept else None
    share_b = sb["truncated_share"] * 100 if b.kept else None
    next(r for r in overview if r[0] == "rows truncated")[3] = (
        MISSING if share_a is None or share_b is None else f"{share_b - share_a:+.1f} pp"
    )

    def count_rows(ca: dict[str, int], cb: dict[str, int]) -> list[list[str]]:
        names = list(dict.fromkeys([*ca, *cb]))
        return [[n, str(ca.get(n, 0)), str(cb.get(n, 0)), f"{cb.get(n, 0) - ca.get(n, 0):+d}"] for n in names]

    rows_a = {f"{c} / {sp}": n for c, splits in a.counts.items() for sp, n in splits.items()}
    rows_b = {f"{c} / {sp}": n for c, splits in b.counts.items() for sp, n in splits.items()}
    config_rows = []
    for key in _ordered_keys(rows_a, rows_b):
        na, nb = rows_a.get(key, 0), rows_b.get(key, 0)
        delta = MISSING if na is None or nb is None else f"{nb - na:+d}"
        config_rows.append([key, _rows_cell(na), _rows_cell(nb), delta])

    figures = []
    for (label, qa), (_, qb) in zip(_quantity_rows(sa), _quantity_rows(sb), strict=True):
        for k in STATS:
            figures.append([f"{label} · {k}", _f4(qa.get(k)), _f4(qb.get(k)), _delta(qa.get(k), qb.get(k), "+.4f")])
    lengths = []
    for role in ROLES:
        for k in STATS:
            fmt = _length_format(k)
            qa, qb = sa["tokens"][role].get(k), sb["tokens"][role].get(k)
            lengths.append(
                [
                    f"{role} ({ROLE_SIGN[role]}) · {k}",
                    fmt(qa),
                    fmt(qb),
                    _delta(qa, qb, "+.0f" if fmt is _int else "+.1f"),
                ]
            )
        ca, cb = a.cut[role], b.cut[role]
        lengths.append([f"{role} ({ROLE_SIGN[role]}) · cut by the token limit", str(ca), str(cb), f"{cb - ca:+d}"])

    return [
        Section("Builds side by side", columns, overview),
        Section("Rows per config and split", columns, config_rows, empty="No Parquet files."),
        Section(
            "Drop reasons", columns, count_rows(sa["drop_reasons"], sb["drop_reasons"]), empty="No query was dropped."
        ),
        Section(
            "Features (queries)", columns, count_rows(sa["features"], sb["features"]), empty="No features recorded."
        ),
        Section("W and π̃", columns, figures),
        Section("Answer lengths (tokens)", columns, lengths),
    ]


def _rows_cell(n: int | None) -> str:
    return "not downloaded" if n is None else str(n)


def _ordered_keys(*mappings: dict[str, Any]) -> list[str]:
    keys = list(dict.fromkeys(k for m in mappings for k in m))
    rank = {c: i for i, c in enumerate(ordered_configs({k.split(" / ")[0] for k in keys}))}
    return sorted(keys, key=lambda k: (rank[k.split(" / ")[0]], k.split(" / ")[1] != "train", k))


# --- rich tables ----------------------------------------------------------------------------------------------


def _rich(section: Section) -> RenderableType:
    if not section.rows:
        return Group(Text(section.title, style="bold"), Text(section.empty), Text(""))
    table = Table(title=section.title, title_style="bold", title_justify="left")
    for i, name in enumerate(section.columns):
        table.add_column(Text(name), justify="left" if i == 0 else "right", overflow="fold")
    for row in section.rows:
        # Text(), not markup: feature names, reasons and paths are data ("[x]" must print as is).
        table.add_row(*(Text(cell) for cell in row))
    parts: list[RenderableType] = [table]
    if section.note:
        parts.append(Text(section.note))
    parts.append(Text(""))
    return Group(*parts)


def summary_table(build: Build) -> Group:
    """The summary of one build for the terminal: counts, drops, features, W, π̃, lengths, truncation."""
    parts: list[RenderableType] = [Text(f"ssogen inspect: {build.label}", style="bold")]
    message = build.message()
    if message:
        parts.append(Text(message, style="bold yellow"))
    parts.append(Text(""))
    parts += [_rich(s) for s in sections(build)]
    return Group(*parts)


def compare_table(a: Build, b: Build) -> Group:
    """Two builds' figures side by side with the difference B − A."""
    head_a, head_b = distinct_names(a, b)
    parts: list[RenderableType] = [Text(f"ssogen inspect: {head_a} vs {head_b}", style="bold")]
    for head, build in ((head_a, a), (head_b, b)):
        message = build.message()
        if message:
            parts.append(Text(f"{head.split(':')[0]}: {message}", style="bold yellow"))
    parts.append(Text(""))
    parts += [_rich(s) for s in compare_sections(a, b)]
    return Group(*parts)
