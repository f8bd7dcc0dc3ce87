"""`ssogen inspect`: look at a built dataset (or compare two rounds) before training on it.

Owns: reading a build back from a folder or a Hub dataset id (`load_build`), the summary and side-by-side
tables printed with rich (`summary_table`, `compare_table`), the PNG plots made with matplotlib's Agg canvas
(`render_plots`) and the HTML report that shows them (`write_report`, template
``prompts/inspect_report.html.j2``). Every figure comes from `ssogen.card.summarize`, so the dataset card, the
terminal and the report agree; the only figure computed here is the per-role count of answers cut by the
token limit, which the card does not have. Tables and HTML are filled from the same formatted cells
(`Section`), so they always print the same numbers.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ssogen.card import ROLES, summarize
from ssogen.errors import SsogenError, UsageError
from ssogen.store import DROPPED_SCHEMA, RECORD_SCHEMA, SETTINGS_FILE, atomic_write_bytes

REPORT_TEMPLATE = "inspect_report.html.j2"
PLOTS = ("weight_hist", "pi_scatter", "lengths", "features", "drops")
# Configs in the order `ssogen build` writes them; others follow alphabetically.
CONFIG_ORDER = ("sso", "dpo", "steer_pos", "steer_neg", "reward", "sso_reference", "dropped")
HUB_PATTERNS = ["data/sso/*", "data/dropped/*", SETTINGS_FILE, "README.md"]
STATS = ("min", "p25", "median", "p75", "max", "mean")
ROLE_SIGN = {"chosen": "y+", "rejected": "y-", "original": "y°"}
# The columns summarize() reads; a data/sso without them was not written by this ssogen.
NEEDED_COLUMNS = ("features", "weight", "truncated", *(f"{k}_{r}" for k in ("logp", "tokens") for r in ROLES))
COLOURS = ("#1f77b4", "#ff7f0e")
ROLE_COLOURS = {"chosen": "#2ca02c", "rejected": "#d62728", "original": "#7f7f7f"}
MISSING = "–"
_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+\.parquet$")


# --- reading a build ------------------------------------------------------------------------------------------


@dataclass
class Build:
    """One build read back: its kept records (every split), its dropped queries, row counts and settings."""

    name: str  # folder name or Hub repo id
    source: str  # the folder path or Hub id as given
    sso: pa.Table
    dropped: pa.Table
    # {config: {split: rows}}; None = the card lists the split but its files were not downloaded.
    counts: dict[str, dict[str, int | None]]
    settings: dict[str, Any]
    summary: dict[str, Any] = field(init=False)
    cut: dict[str, int] = field(init=False)  # answers per role that stopped at the token limit

    def __post_init__(self) -> None:
        self.summary = summarize(self.sso, self.dropped)
        self.cut = {
            role: sum(1 for f in self.sso.column(f"finish_{role}").to_pylist() if f == "length")
            if f"finish_{role}" in self.sso.column_names
            else 0
            for role in ROLES
        }

    @property
    def run(self) -> dict[str, Any]:
        run = self.settings.get("run")
        return run if isinstance(run, dict) else {}

    @property
    def round(self) -> Any:
        if "round" in self.run:
            return self.run["round"]
        rounds = sorted(set(self.sso.column("round").to_pylist())) if "round" in self.sso.column_names else []
        return rounds[0] if len(rounds) == 1 else None

    @property
    def seed(self) -> Any:
        return self.run.get("seed")

    @property
    def label(self) -> str:
        parts = [f"round {_text(self.round)}"]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return f"{self.name} ({', '.join(parts)})"

    @property
    def kept(self) -> int:
        return int(self.summary["kept"])

    def message(self) -> str | None:
        """Why there is nothing to summarise, or None when there are kept rows."""
        if self.kept:
            return None
        n = self.summary["dropped"]
        if not n:
            return "no kept rows: the build holds no queries (data/sso has no rows and nothing was dropped)"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.summary["drop_reasons"].items())
        everything = "the only query was dropped" if n == 1 else f"all {n} queries were dropped"
        return f"no kept rows: {everything} (reasons: {reasons})"


def load_build(target: str) -> Build:
    """Read a folder written by `ssogen build`, or download the parts inspect needs of a Hub dataset."""
    path = Path(target).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{target} is not a folder written by `ssogen build` (it is a file).")
        return _read_folder(path, name=path.resolve().name, source=str(target), hub=False)
    if not _looks_like_repo_id(target):
        raise UsageError(f"{target} does not exist: give a folder written by `ssogen build` or a Hub dataset id.")
    return _read_folder(_download(target), name=target, source=target, hub=True)


def _looks_like_repo_id(target: str) -> bool:
    if target.count("/") != 1 or target.startswith((".", "/", "~")):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(target)
    except HFValidationError:
        return False
    return True


def _download(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        local = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", allow_patterns=HUB_PATTERNS)
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as exc:
        raise UsageError(
            f"{repo_id} is neither a local folder nor a Hub dataset you can read ({type(exc).__name__}); "
            "check the path or the id (and HF_TOKEN for a private dataset)."
        ) from None
    except Exception as exc:  # network, cache and HTTP failures all mean "could not fetch it"
        raise SsogenError(f"could not download the Hub dataset {repo_id}: {exc}") from None
    return Path(local)


def _read_folder(root: Path, *, name: str, source: str, hub: bool) -> Build:
    data = root / "data"
    if not (data / "sso").is_dir() and not (data / "dropped").is_dir():
        where = "a dataset" if hub else "a folder"
        raise UsageError(f"{source} is not {where} written by `ssogen build`: it has no data/sso or data/dropped.")
    files = _parquet_files(data)
    counts = {
        config: {split: sum(pq.ParquetFile(p).metadata.num_rows for p in paths) for split, paths in splits.items()}
        for config, splits in files.items()
    }
    for config, splits in _card_configs(root / "README.md").items():
        for split in splits:
            counts.setdefault(config, {}).setdefault(split, None)
    counts = {c: _ordered_splits(counts[c]) for c in _ordered_configs(counts)}
    sso = _read_tables(files.get("sso", {}), RECORD_SCHEMA, f"{source}: data/sso")
    missing = [c for c in NEEDED_COLUMNS if c not in sso.column_names]
    if missing:
        raise UsageError(f"{source}: data/sso lacks the columns {', '.join(missing)}; is it an ssogen build?")
    dropped = _read_tables(files.get("dropped", {}), DROPPED_SCHEMA, f"{source}: data/dropped")
    if "reason" not in dropped.column_names:
        raise UsageError(f"{source}: data/dropped lacks the column reason; is it an ssogen build?")
    return Build(name=name, source=source, sso=sso, dropped=dropped, counts=counts, settings=_settings(root))


def _parquet_files(data: Path) -> dict[str, dict[str, list[Path]]]:
    """{config: {split: [shards]}} of the Parquet files under data/."""
    found: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(data.glob("*/*.parquet")):
        match = _SHARD.match(path.name)
        split = match["split"] if match else path.stem.split("-")[0]
        found.setdefault(path.parent.name, {}).setdefault(split, []).append(path)
    return found


def _card_configs(readme: Path) -> dict[str, list[str]]:
    """{config: [splits]} from the card's YAML front matter (the configs a Hub download may have skipped)."""
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        header = yaml.safe_load(text[3:].split("\n---", 1)[0]) or {}
    except yaml.YAMLError:
        return {}
    configs: dict[str, list[str]] = {}
    for entry in header.get("configs") or [] if isinstance(header, dict) else []:
        if isinstance(entry, dict) and entry.get("config_name"):
            files = entry.get("data_files") or []
            configs[str(entry["config_name"])] = [
                str(f["split"]) for f in files if isinstance(f, dict) and f.get("split")
            ]
    return configs


def _ordered_configs(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [c for c in CONFIG_ORDER if c in names] + sorted(names - set(CONFIG_ORDER))


def _ordered_splits(splits: dict[str, Any]) -> dict[str, Any]:
    first = [s for s in ("train", "test") if s in splits]
    return {s: splits[s] for s in first + sorted(set(splits) - set(first))}


def _read_tables(splits: dict[str, list[Path]], schema: pa.Schema, where: str) -> pa.Table:
    paths = [p for paths in _ordered_splits(splits).values() for p in paths]
    if not paths:
        return schema.empty_table()
    try:
        return pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"{where}: cannot read its Parquet files: {exc}") from None


def _settings(root: Path) -> dict[str, Any]:
    path = root / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    return settings if isinstance(settings, dict) else {}


# --- the figures, formatted once for the terminal and the HTML ------------------------------------------------


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
        ("model", _text(run.get("model") or _single(build.sso, "model"))),
        ("round", _text(build.round)),
        ("seed", _text(build.seed)),
        ("alpha", _text(run.get("alpha") if "alpha" in run else _single(build.sso, "alpha"))),
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


def _single(table: pa.Table, column: str) -> Any:
    if column not in table.column_names:
        return None
    values = set(table.column(column).to_pylist())
    return values.pop() if len(values) == 1 else None


def sections(build: Build) -> list[Section]:
    """The summary of one build as formatted tables (the terminal and the HTML both print these)."""
    s = build.summary
    splits = list(_ordered_splits({sp: 0 for c in build.counts.values() for sp in c}))
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


def _distinct_names(a: Build, b: Build) -> tuple[str, str]:
    """Column headers for two builds, telling apart two folders of the same name by their parents."""
    la, lb = a.label, b.label
    if la == lb and a.source != b.source:
        pa_, pb_ = Path(a.source).resolve().parts, Path(b.source).resolve().parts
        k = 2
        while k < max(len(pa_), len(pb_)) and pa_[-k:] == pb_[-k:]:
            k += 1
        la = la.replace(a.name, "/".join(pa_[-k:]), 1)
        lb = lb.replace(b.name, "/".join(pb_[-k:]), 1)
    return f"A: {la}", f"B: {lb}"


def _delta(a: float | None, b: float | None, fmt: str) -> str:
    if a is None or b is None:
        return MISSING
    return format(b - a, fmt)


def compare_sections(a: Build, b: Build) -> list[Section]:
    """The same figures of two builds side by side, with the difference B − A."""
    head_a, head_b = _distinct_names(a, b)
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
    rank = {c: i for i, c in enumerate(_ordered_configs({k.split(" / ")[0] for k in keys}))}
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
    head_a, head_b = _distinct_names(a, b)
    parts: list[RenderableType] = [Text(f"ssogen inspect: {head_a} vs {head_b}", style="bold")]
    for head, build in ((head_a, a), (head_b, b)):
        message = build.message()
        if message:
            parts.append(Text(f"{head.split(':')[0]}: {message}", style="bold yellow"))
    parts.append(Text(""))
    parts += [_rich(s) for s in compare_sections(a, b)]
    return Group(*parts)


# --- plots ----------------------------------------------------------------------------------------------------


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


def render_plots(build: Build, out_dir: Path, compare: Build | None = None) -> dict[str, Path]:
    """Write the PNG plots of a build into ``out_dir``; returns {plot name: path} of those written.

    The W histogram and the π̃ scatter overlay ``compare`` when given. Plots of kept rows are left out
    when no build shown has any, so no plot is ever empty; ``drops.png`` is always written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    builds = [(build.label, build)]
    if compare is not None:  # legend labels as in the side-by-side table
        builds = list(zip(_distinct_names(build, compare), (build, compare), strict=True))
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
    return plots


# --- the HTML report ------------------------------------------------------------------------------------------

CAPTIONS = {
    "weight_hist": "Histogram of W, the weight of the steering losses (dashed: medians).",
    "pi_scatter": "π̃(y+|x) against π̃(y-|x) per query; the dotted diagonal is y = x.",
    "lengths": "Answer lengths in tokens per role; x marks answers cut by the token limit.",
    "features": "How many kept queries were steered along each feature.",
    "drops": "Queries dropped, per reason.",
}


def write_report(build: Build, out_dir: Path, compare: Build | None = None) -> Path:
    """Write ``out_dir/index.html`` and its PNG plots; returns the path of index.html."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from ssogen import __version__
    from ssogen.library import resource_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = render_plots(build, out_dir, compare=compare)
    for name in PLOTS:  # a plot of an earlier report that this one does not have
        if name not in plots:
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    messages = [m for m in [build.message()] if m]
    title = f"ssogen inspect: {build.label}"
    if compare is not None:
        head_a, head_b = _distinct_names(build, compare)
        title = f"ssogen inspect: {head_a} vs {head_b}"
        messages = [f"{h.split(':')[0]}: {m}" for h, b in ((head_a, build), (head_b, compare)) if (m := b.message())]
    env = Environment(loader=FileSystemLoader(resource_dir("prompts")), autoescape=True, undefined=StrictUndefined)
    html = env.get_template(REPORT_TEMPLATE).render(
        title=title,
        label=build.label,
        version=__version__,
        messages=messages,
        sections=sections(build),
        compare_sections=compare_sections(build, compare) if compare is not None else [],
        comparison=title.removeprefix("ssogen inspect: ") if compare is not None else None,
        plots=[{"file": p.name, "caption": CAPTIONS[name]} for name, p in plots.items()],
    )
    index = out_dir / "index.html"
    atomic_write_bytes(index, html.encode("utf-8"))
    return index


# --- the command ----------------------------------------------------------------------------------------------


def run_inspect(target: str, report: Path | None, compare: str | None, console: Console | None = None) -> int:
    """`ssogen inspect TARGET [--report DIR] [--compare OTHER]`: print the summary, write the report if asked."""
    console = console or Console()
    build = load_build(target)
    other = load_build(compare) if compare is not None else None
    console.print(summary_table(build) if other is None else compare_table(build, other))
    if report is not None:
        index = write_report(build, Path(report), compare=other)
        console.print(Text(f"report: {index}"))
    return 0
