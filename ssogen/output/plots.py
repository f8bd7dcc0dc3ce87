"""PNG plots of a build (and of its audit), drawn with matplotlib's Figure API on an Agg canvas.

Owns: `render_plots` (W histogram, π̃ scatter, lengths, features, drops; the audit's verdicts when the build
has one), written atomically so a reader never sees half a PNG. Used by `ssogen inspect --report` and by the
dataset card (`--card-plots`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ssogen.output.card import ROLE_SIGN, ROLES
from ssogen.output.readback import Build, distinct_names
from ssogen.output.store import atomic_write_bytes

PLOTS = ("weight_hist", "pi_scatter", "lengths", "features", "drops", "audit")
COLOURS = ("#1f77b4", "#ff7f0e")
ROLE_COLOURS = {"chosen": "#2ca02c", "rejected": "#d62728", "original": "#7f7f7f"}
PAIR_COLOURS = {"main": "#1f77b4", "steer_neg": "#9467bd"}
LINESTYLES = ("-", "--")


def _figure(width: float = 6.4, height: float = 4.2) -> Any:
    # The Figure API with an explicit Agg canvas: no pyplot, no GUI backend, no global state to switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _column(build: Build, name: str) -> list[Any]:
    return build.sso.column(name).to_pylist()


def _pi_pairs(build: Build) -> list[tuple[float, float]]:
    pairs = zip(_column(build, "logp_rejected"), _column(build, "logp_chosen"), strict=True)
    return [(x, y) for x, y in pairs if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]


def _plot_weights(builds: list[tuple[str, Build]], path: Path) -> Path:
    import numpy as np

    values = [(label, _finite(_column(b, "weight"))) for label, b in builds]
    everything = [v for _, vs in values for v in vs]
    edges = np.histogram_bin_edges(everything, bins=min(30, max(6, int(math.sqrt(len(everything))) * 2)))
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, vs) in enumerate(values):
        if not vs:
            continue
        colour = COLOURS[i % len(COLOURS)]
        ax.hist(vs, bins=edges, color=colour, alpha=0.6 if len(values) > 1 else 0.85, edgecolor="white", label=label)
        median = float(np.median(vs))
        ax.axvline(median, color=colour, linestyle="--", linewidth=1.5, label=f"median {median:.3f}")
    ax.set_xlabel(r"W = sigmoid$(-(\alpha\,\tilde\pi(y^+) + (1-\alpha)\,\tilde\pi(y^-)))$")
    ax.set_ylabel("queries")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Weight W of the steering losses, per kept query")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _plot_pi(builds: list[tuple[str, Build]], path: Path) -> Path:
    points = [(label, _pi_pairs(b)) for label, b in builds]
    everything = [v for _, ps in points for p in ps for v in p]
    low, high = min(everything), max(everything)
    pad = max(0.05, 0.08 * (high - low))
    low, high = low - pad, high + pad
    fig = _figure(6.4, 6.4)
    ax = fig.add_subplot()
    ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle=":", label="y = x (no gap)")
    markers = ("o", "s")
    for i, (label, ps) in enumerate(points):
        if not ps:
            continue
        above = sum(1 for x, y in ps if y > x)
        ax.scatter(
            [x for x, _ in ps],
            [y for _, y in ps],
            color=COLOURS[i % len(COLOURS)],
            marker=markers[i % len(markers)],
            alpha=0.75,
            edgecolor="white",
            s=46,
            label=f"{label}: {above} of {len(ps)} above the line",
        )
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$\tilde\pi(y^-\mid x)$  rejected")
    ax.set_ylabel(r"$\tilde\pi(y^+\mid x)$  chosen")
    ax.set_title("Mean per-token log-prob under the bare query\n(above the line: y+ more likely than y-)")
    # Below the axes: inside, it would hide points.
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13))
    return _save(fig, path)


def _plot_lengths(build: Build, path: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot()
    data = [[int(t) for t in _column(build, f"tokens_{role}") if t is not None] for role in ROLES]
    ax.boxplot(data, positions=range(1, len(ROLES) + 1), widths=0.5, showfliers=False)
    for i, role in enumerate(ROLES, start=1):
        tokens = _column(build, f"tokens_{role}")
        finish = (
            _column(build, f"finish_{role}") if f"finish_{role}" in build.sso.column_names else [None] * len(tokens)
        )
        xs = i + rng.uniform(-0.15, 0.15, len(tokens))
        for cut, marker, suffix in ((False, "o", ""), (True, "x", " (cut)")):
            chosen = [
                (x, t) for x, t, f in zip(xs, tokens, finish, strict=True) if t is not None and (f == "length") == cut
            ]
            if chosen:
                ax.scatter(
                    [x for x, _ in chosen],
                    [t for _, t in chosen],
                    color=ROLE_COLOURS[role],
                    marker=marker,
                    alpha=0.8,
                    s=34,
                    label=f"{role}{suffix}",
                )
    limit = build.run.get("max_new_tokens")
    if isinstance(limit, int) and limit > 0:
        ax.axhline(limit, color="black", linestyle="--", linewidth=1, label=f"token limit ({limit})")
    ax.set_xticks(range(1, len(ROLES) + 1), [f"{r} ({ROLE_SIGN[r]})" for r in ROLES])
    ax.set_ylabel("answer tokens")
    ax.set_title("Answer lengths per role (x: cut by the token limit)")
    ax.legend(fontsize="x-small", ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return _save(fig, path)


def _plot_bars(counts: dict[str, int], path: Path, title: str, xlabel: str, colour: str) -> Path:
    names = list(counts)[::-1]  # largest on top
    fig = _figure(6.4, max(2.6, 0.9 + 0.42 * len(names)))
    ax = fig.add_subplot()
    bars = ax.barh(names, [counts[n] for n in names], color=colour)
    ax.bar_label(bars, padding=3)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.12)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def _plot_no_drops(build: Build, path: Path) -> Path:
    fig = _figure(6.4, 2.6)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.6, "no drops", ha="center", va="center", fontsize=28, color="#2ca02c", weight="bold")
    detail = f"all {build.kept} queries were kept" if build.kept else "the build holds no queries"
    ax.text(0.5, 0.25, detail, ha="center", va="center", fontsize=12)
    return _save(fig, path)


def _plot_audit(builds: list[tuple[str, Build]], path: Path) -> Path:
    """The judge's P per pair (histogram) and its accuracy by W quartile with 95 % Wilson intervals."""
    import numpy as np

    fig = _figure(11.0, 4.6)
    spread, by_weight = fig.subplots(1, 2)
    bins = np.linspace(0.0, 1.0, 21)
    shown = [(i, label, b, pair, f) for i, (label, b) in enumerate(builds) for pair, f in b.audit_summary.items()]
    offsets = np.linspace(-0.15, 0.15, len(shown)) if len(shown) > 1 else [0.0]
    for (i, label, b, pair, f), offset in zip(shown, offsets, strict=True):
        name = f"{label}: {f['label']}" if len(builds) > 1 else f["label"]
        style = {"color": PAIR_COLOURS.get(pair, "#333333"), "linestyle": LINESTYLES[i % len(LINESTYLES)]}
        values = [p for p, kind in zip(_audit_column(b, "p"), _audit_column(b, "pair"), strict=True) if kind == pair]
        spread.hist(values, bins=bins, histtype="step", linewidth=2, label=name, **style)
        groups = [g for g in f["by_weight"] if g["accuracy"] is not None]
        xs = np.arange(len(groups)) + offset
        ys = [g["accuracy"] for g in groups]
        errors = [
            [y - g["ci"][0] for y, g in zip(ys, groups, strict=True)],
            [g["ci"][1] - y for y, g in zip(ys, groups, strict=True)],
        ]
        by_weight.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, label=name, **style)
    spread.axvline(0.5, color="black", linestyle=":", linewidth=1)
    spread.set_xlim(0, 1)
    spread.set_xlabel("P(preferred ≻ other)")
    spread.set_ylabel("rows")
    spread.yaxis.get_major_locator().set_params(integer=True)
    spread.set_title("The judge's verdicts (right of 0.5: it agrees)")
    by_weight.axhline(0.5, color="black", linestyle=":", linewidth=1)
    by_weight.set_ylim(-0.02, 1.02)
    by_weight.set_xticks(range(4), ["Q1 (low W)", "Q2", "Q3", "Q4 (high W)"])
    by_weight.set_ylabel("accuracy (P > 0.5)")
    by_weight.set_title("Accuracy by W quartile (95 % Wilson interval)")
    handles, labels = by_weight.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize="small", loc="outside lower center", ncols=2)
    return _save(fig, path)


def _audit_column(build: Build, name: str) -> list[Any]:
    return build.audit.column(name).to_pylist()


def render_plots(build: Build, out_dir: Path, compare: Build | None = None) -> dict[str, Path]:
    """Write the PNG plots of a build into ``out_dir``; returns {plot name: path} of those written.

    The W histogram, the π̃ scatter and the audit's verdicts overlay ``compare`` when given. Plots of kept
    rows are left out when no build shown has any, so no plot is ever empty; ``drops.png`` is always written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    builds = [(build.label, build)]
    if compare is not None:  # legend labels as in the side-by-side table
        builds = list(zip(distinct_names(build, compare), (build, compare), strict=True))
    plots: dict[str, Path] = {}
    if any(_finite(_column(b, "weight")) for _, b in builds):
        plots["weight_hist"] = _plot_weights(builds, out_dir / "weight_hist.png")
    if any(_pi_pairs(b) for _, b in builds):
        plots["pi_scatter"] = _plot_pi(builds, out_dir / "pi_scatter.png")
    if build.kept:
        plots["lengths"] = _plot_lengths(build, out_dir / "lengths.png")
    if build.summary["features"]:
        plots["features"] = _plot_bars(
            build.summary["features"], out_dir / "features.png", "Features steered per kept query", "queries", "#9467bd"
        )
    if build.summary["drop_reasons"]:
        plots["drops"] = _plot_bars(
            build.summary["drop_reasons"], out_dir / "drops.png", "Why queries were dropped", "queries", "#d62728"
        )
    else:
        plots["drops"] = _plot_no_drops(build, out_dir / "drops.png")
    if any(b.audit_summary for _, b in builds):
        plots["audit"] = _plot_audit(builds, out_dir / "audit.png")
    return plots
