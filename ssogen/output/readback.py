"""Reading a build back: a folder written by `ssogen build`, or the parts of a Hub dataset that inspect reads.

Owns: `Build` (a build's kept records, dropped queries, row counts per config and split, settings, and its
audit when `ssogen audit` has judged it), `load_build` (a folder or a Hub dataset id), and the order in which
configs and splits are shown. Figures are computed elsewhere (`ssogen.output.card.summarize` for the build,
`ssogen.output.audit_summary.summarize_audit` for its audit); the tables, plots and page read them from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ssogen.errors import SsogenError, UsageError
from ssogen.output.audit_summary import AUDIT_CONFIG, AUDIT_FILE, AUDIT_SCHEMA, summarize_audit
from ssogen.output.card import ROLES, summarize
from ssogen.output.store import DROPPED_SCHEMA, RECORD_SCHEMA, SETTINGS_FILE

# Configs in the order `ssogen build` writes them; others follow alphabetically.
CONFIG_ORDER = ("sso", "dpo", "steer_pos", "steer_neg", "reward", "sso_reference", "dropped", "audit")
HUB_PATTERNS = ["data/sso/*", "data/dropped/*", f"data/{AUDIT_CONFIG}/*", SETTINGS_FILE, AUDIT_FILE, "README.md"]
# The columns summarize() reads; a data/sso without them was not written by this ssogen.
NEEDED_COLUMNS = ("features", "weight", "truncated", *(f"{k}_{r}" for k in ("logp", "tokens") for r in ROLES))
# An audit whose judge disagrees with itself across the two orders on more than this share is flagged.
POSITION_WARNING_SHARE = 0.5
_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+\.parquet$")


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
    # The split of each row of `sso` (the Parquet files are read train first, then test).
    sso_splits: list[str] = field(default_factory=list)
    # `ssogen audit`'s verdicts (the `audit` config; empty when never audited) and how it was run (audit.yaml).
    audit: pa.Table = field(default_factory=AUDIT_SCHEMA.empty_table)
    audit_meta: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(init=False)
    cut: dict[str, int] = field(init=False)  # answers per role that stopped at the token limit
    audit_summary: dict[str, Any] = field(init=False)  # {pair: figures}; empty when never audited

    def __post_init__(self) -> None:
        self.summary = summarize(self.sso, self.dropped)
        self.audit_summary = summarize_audit(self.audit)
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
        parts = [f"round {'–' if self.round is None else self.round}"]
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

    def messages(self) -> list[str]:
        """What a reader must see first: why nothing is summarised, and features on nearly every kept row."""
        empty = self.message()
        warnings = [
            f"warning: the feature {w['feature']} steers {100 * w['share']:.1f} % of the kept rows "
            f"({w['rows']} of {self.kept}): the feature selection barely depends on the query"
            for w in self.summary["feature_warnings"]
        ]
        warnings += [
            f"warning: audit, {f['label']}: the judge picked different answers in the two orders on "
            f"{100 * f['inconsistent']:.0f} % of the rows; its verdicts mostly follow position, so read its "
            "accuracy with care"
            for f in self.audit_summary.values()
            if f["inconsistent"] is not None and f["inconsistent"] > POSITION_WARNING_SHARE
        ]
        return [empty] if empty else warnings


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
    counts = {c: ordered_splits(counts[c]) for c in ordered_configs(counts)}
    sso = _read_tables(files.get("sso", {}), RECORD_SCHEMA, f"{source}: data/sso")
    missing = [c for c in NEEDED_COLUMNS if c not in sso.column_names]
    if missing:
        raise UsageError(f"{source}: data/sso lacks the columns {', '.join(missing)}; is it an ssogen build?")
    dropped = _read_tables(files.get("dropped", {}), DROPPED_SCHEMA, f"{source}: data/dropped")
    if "reason" not in dropped.column_names:
        raise UsageError(f"{source}: data/dropped lacks the column reason; is it an ssogen build?")
    sso_splits = [
        split
        for split, paths in ordered_splits(files.get("sso", {})).items()
        for path in paths
        for _ in range(pq.ParquetFile(path).metadata.num_rows)
    ]
    audit = _read_tables(files.get(AUDIT_CONFIG, {}), AUDIT_SCHEMA, f"{source}: data/{AUDIT_CONFIG}")
    missing = [c for c in AUDIT_SCHEMA.names if audit.num_rows and c not in audit.column_names]
    if missing:
        raise UsageError(
            f"{source}: data/{AUDIT_CONFIG} lacks the columns {', '.join(missing)}; run `ssogen audit` again."
        )
    return Build(
        name=name,
        source=source,
        sso=sso,
        dropped=dropped,
        counts=counts,
        settings=_settings(root),
        sso_splits=sso_splits,
        audit=audit,
        audit_meta=_settings(root, AUDIT_FILE),
    )


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


def ordered_configs(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [c for c in CONFIG_ORDER if c in names] + sorted(names - set(CONFIG_ORDER))


def ordered_splits(splits: dict[str, Any]) -> dict[str, Any]:
    first = [s for s in ("train", "test") if s in splits]
    return {s: splits[s] for s in first + sorted(set(splits) - set(first))}


def _read_tables(splits: dict[str, list[Path]], schema: pa.Schema, where: str) -> pa.Table:
    paths = [p for paths in ordered_splits(splits).values() for p in paths]
    if not paths:
        return schema.empty_table()
    try:
        return pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive")
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"{where}: cannot read its Parquet files: {exc}") from None


def _settings(root: Path, name: str = SETTINGS_FILE) -> dict[str, Any]:
    path = root / name
    if not path.is_file():
        return {}
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from None
    return settings if isinstance(settings, dict) else {}


def single_value(table: pa.Table, column: str) -> Any:
    """The one value a column holds in every row, else None (also when the column is missing)."""
    if column not in table.column_names:
        return None
    values = set(table.column(column).to_pylist())
    return values.pop() if len(values) == 1 else None


def distinct_names(a: Build, b: Build) -> tuple[str, str]:
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
