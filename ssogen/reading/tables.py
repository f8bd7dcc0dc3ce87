"""The summary of a build (and of its audit) as tables: formatted once, printed with rich or put in the HTML page.

Owns: `Section` (a title, columns and rows of formatted cells), the summary of one build (`sections`), two builds
side by side (`compare_sections`), and their rich rendering for the terminal (`summary_table`, `compare_table`).
Every figure comes from `ssogen.output.card.summarize` (and `ssogen.output.audit_summary` for an audit), so the
dataset card, the terminal and the report agree; the only figure computed here is the per-role count of answers cut
by the token limit, which the card does not have. Tables and HTML are filled from the same cells, so they always
print the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ssogen.output.card import ROLE_SIGN, ROLES
from ssogen.output.readback import Build, distinct_names, ordered_configs, ordered_splits, single_value

STATS = ("min", "p25", "median", "p75", "max", "mean")
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
    out.append(_degenerate_section(s["degenerate"]))
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
    return out + audit_sections(build)


DEGENERATE_COLUMNS = {
    "kept": "in kept rows",
    "stopped": "of which stopped by the engine",
    "dropped": "in dropped queries",
    "total": "total",
}


def _degenerate_section(counts: dict[str, dict[str, int]] | None) -> Section:
    return Section(
        "Degenerate answers (loops)",
        ["role", *DEGENERATE_COLUMNS.values()],
        []
        if counts is None
        else [[f"{r} ({ROLE_SIGN[r]})", *(str(counts[r][k]) for k in DEGENERATE_COLUMNS)] for r in ROLES],
        empty="Not recorded: this build has no degenerate_* columns (made before ssogen flagged loops).",
        note="Stopped by the engine: finish_* = repetition. A query whose y+ or y° looped is dropped "
        "(degenerate_chosen, degenerate_original); a looping y- is kept and flagged. In dropped queries an "
        "answer counts when the reason names it or the engine stopped it as a loop.",
    )


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
        Section(
            "Degenerate answers (loops)",
            columns,
            _degenerate_rows(sa["degenerate"], sb["degenerate"]),
            empty="Not recorded in either build.",
        ),
        *_audit_compare_sections(a, b, columns),
    ]


def _degenerate_rows(a: dict[str, dict[str, int]] | None, b: dict[str, dict[str, int]] | None) -> list[list[str]]:
    if a is None and b is None:
        return []
    rows = []
    for role in ROLES:
        for key, label in DEGENERATE_COLUMNS.items():
            na = None if a is None else a[role][key]
            nb = None if b is None else b[role][key]
            rows.append([f"{role} ({ROLE_SIGN[role]}) · {label}", _text(na), _text(nb), _delta(na, nb, "+.0f")])
    return rows


def _rows_cell(n: int | None) -> str:
    return "not downloaded" if n is None else str(n)


def _ordered_keys(*mappings: dict[str, Any]) -> list[str]:
    keys = list(dict.fromkeys(k for m in mappings for k in m))
    rank = {c: i for i, c in enumerate(ordered_configs({k.split(" / ")[0] for k in keys}))}
    return sorted(keys, key=lambda k: (rank[k.split(" / ")[0]], k.split(" / ")[1] != "train", k))


# --- the audit ------------------------------------------------------------------------------------------------


def _f3(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def _share(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f} %"


def _accuracy(group: dict[str, Any] | None) -> str:
    """'accuracy (rows)' of a group of verdicts."""
    return MISSING if not group else f"{_f3(group['accuracy'])} ({group['rows']})"


def _interval(ci: tuple[float, float] | list[float] | None) -> str:
    return MISSING if ci is None else f"{ci[0]:.3f}–{ci[1]:.3f}"


# (label, figure) of the verdict table: every figure of `ssogen.output.audit_summary.summarize_pair` shown per pair.
VERDICT_ROWS: list[tuple[str, Any]] = [
    ("rows judged", lambda f: str(f["rows"])),
    ("accuracy (P > 0.5)", lambda f: _f3(f["accuracy"])),
    ("95 % CI (Wilson)", lambda f: _interval(f["ci"])),
    ("mean P(preferred ≻ other)", lambda f: _f3(f["mean_p"])),
    ("mean margin", lambda f: _f3(f["mean_margin"])),
    ("position-inconsistent", lambda f: _share(f["inconsistent"])),
    ("P(first shown wins)", lambda f: _f3(f["first_position"])),
    (
        "position-consistent rows: accuracy (rows)",
        lambda f: MISSING if f["inconsistent"] is None else _accuracy(f["consistent"]),
    ),
    ("probability on the two labels", lambda f: _f3(f["label_mass"])),
    ("similar length (±25 %): accuracy (rows)", lambda f: _accuracy(f["similar_length"])),
    ("preferred answer longer", lambda f: _share(f["preferred_longer_share"])),
    ("accuracy where preferred is longer (rows)", lambda f: _accuracy(f["preferred_longer"])),
    ("accuracy where it is not (rows)", lambda f: _accuracy(f["preferred_not_longer"])),
]


def _audit_overview(build: Build) -> list[list[str]]:
    meta = build.audit_meta
    judge, rows, cost = meta.get("judge", {}), meta.get("rows", {}), meta.get("cost", {})
    kind = judge.get("kind", MISSING) + (", self-judging" if judge.get("self_judging") else "")
    skipped = rows.get("skipped_too_long") or {}
    start = cost.get("engine_start_seconds")
    template = MISSING
    if judge.get("template"):
        template = f"{judge['template']} ({judge.get('template_hash')}), labels {' / '.join(judge.get('labels') or [])}"
    return [
        ["judge", f"{judge.get('model', MISSING)} ({kind})"],
        ["template", template],
        [
            "rows audited",
            f"{rows.get('audited', MISSING)} of {rows.get('kept_in_build', MISSING)} kept "
            f"({rows.get('selection', MISSING)})",
        ],
        ["left out (too long for the judge)", ", ".join(f"{p}: {n}" for p, n in skipped.items()) or "0"],
        [
            "audit cost",
            f"{cost.get('prompts', MISSING)} prompts, {cost.get('prompt_tokens', MISSING)} prompt tokens "
            f"(prefill only) in {cost.get('judge_seconds', MISSING)} s"
            + (f" + {start} s engine start" if start is not None else ""),
        ],
        [
            "build, same rows",
            f"{cost.get('build_generated_tokens', MISSING)} tokens generated; "
            + (
                f"{cost['build_seconds']} s"
                if cost.get("build_seconds") is not None
                else "time not recorded in the folder"
            ),
        ],
    ]


def audit_sections(build: Build) -> list[Section]:
    """The audit of a build as tables: how it was run, the verdicts per pair, by W quartile and by feature."""
    pairs = build.audit_summary
    if not pairs:
        return []
    labels = [f["label"] for f in pairs.values()]
    first = next(iter(pairs.values()))
    quartiles = []
    for i, q in enumerate(first["by_weight"]):
        cells = [_accuracy(f["by_weight"][i]) if i < len(f["by_weight"]) else MISSING for f in pairs.values()]
        quartiles.append([q["quartile"], f"{q['low']:.4f}–{q['high']:.4f}", *cells])
    features = list(dict.fromkeys(name for f in pairs.values() for name in f["by_feature"]))
    return [
        Section("Audit", ["", build.label], _audit_overview(build)),
        Section(
            "Audit verdicts",
            ["", *labels],
            [[label, *(figure(f) for f in pairs.values())] for label, figure in VERDICT_ROWS],
            note="Accuracy: share of rows with P(preferred ≻ other) > 0.5. Position-inconsistent: the two orders "
            "picked different answers. P(first shown wins) is 0.5 for a judge without position bias.",
        ),
        Section(
            "Audit accuracy by W quartile (rows)",
            ["W quartile", "W range", *labels],
            quartiles,
            note="Does W rise where the judge agrees? Quartiles of the audited rows' W, lowest first.",
        ),
        Section(
            "Audit accuracy by feature (rows)",
            ["feature", *labels],
            [[name, *(_accuracy(f["by_feature"].get(name)) for f in pairs.values())] for name in features],
        ),
    ]


def _audit_compare_sections(a: Build, b: Build, columns: list[str]) -> list[Section]:
    if not a.audit_summary and not b.audit_summary:
        return []
    judges = [(x.audit_meta.get("judge") or {}).get("model", MISSING) if x.audit_summary else MISSING for x in (a, b)]
    rows = [["judge", *judges, ""]]
    features = []
    numeric = {"accuracy (P > 0.5)", "mean P(preferred ≻ other)", "position-inconsistent", "P(first shown wins)"}
    for pair in dict.fromkeys([*a.audit_summary, *b.audit_summary]):
        fa, fb = a.audit_summary.get(pair), b.audit_summary.get(pair)
        label = (fa or fb or {})["label"]
        for name, figure in VERDICT_ROWS:
            va, vb = (figure(f) if f else MISSING for f in (fa, fb))
            delta = ""
            if name in numeric and MISSING not in (va, vb):
                delta = _delta(_number(va), _number(vb), "+.1f" if va.endswith("%") else "+.3f")
                delta += " pp" if va.endswith("%") else ""
            rows.append([f"{label} · {name}", va, vb, delta])
        names = dict.fromkeys([*((fa or {}).get("by_feature") or {}), *((fb or {}).get("by_feature") or {})])
        for name in names:
            ga, gb = ((f or {}).get("by_feature", {}).get(name) for f in (fa, fb))
            delta = _delta(ga["accuracy"], gb["accuracy"], "+.3f") if ga and gb else MISSING
            features.append([f"{name} · {label}", _accuracy(ga), _accuracy(gb), delta])
    return [
        Section("Audits side by side", columns, rows),
        Section("Audit accuracy by feature (rows)", columns, features),
    ]


def _number(cell: str) -> float:
    return float(cell.split()[0])


def audit_table(build: Build) -> Group:
    """`ssogen audit`'s terminal output: the audit's tables of one build."""
    parts: list[RenderableType] = [Text(f"ssogen audit: {build.label}", style="bold")]
    parts += [Text(m, style="bold yellow") for m in build.messages() if m.startswith("warning: audit,")]
    parts += [Text(""), *(_rich(s) for s in audit_sections(build))]
    return Group(*parts)


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
    parts += [Text(message, style="bold yellow") for message in build.messages()]
    parts.append(Text(""))
    parts += [_rich(s) for s in sections(build)]
    return Group(*parts)


def compare_table(a: Build, b: Build) -> Group:
    """Two builds' figures side by side with the difference B − A."""
    head_a, head_b = distinct_names(a, b)
    parts: list[RenderableType] = [Text(f"ssogen inspect: {head_a} vs {head_b}", style="bold")]
    for head, build in ((head_a, a), (head_b, b)):
        parts += [Text(f"{head.split(':')[0]}: {m}", style="bold yellow") for m in build.messages()]
    parts.append(Text(""))
    parts += [_rich(s) for s in compare_sections(a, b)]
    return Group(*parts)
