"""`ssogen audit TARGET`: measure whether a build's pairs are right before anyone trains on them.

Owns the command: checking every input before an engine starts (`plan_audit`: the build, the rows to judge,
the judge model and its chat template, the judge template's labels), judging both pairs of the method
(`judge`: pairwise label log-probabilities in both orders, or a reward model's scores), writing the result into
the dataset folder (the `audit` config, ``audit.yaml``, the card's audit
section: `write_audit`), printing the tables, and publishing with `ssogen.hub.publish` when asked. The prompts and
the verdict arithmetic are `ssogen.reading.judging`; the figures `ssogen.output.audit_summary`.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from rich.console import Console
from rich.text import Text

from ssogen import __version__
from ssogen.errors import UsageError
from ssogen.files import atomic_path, atomic_write_bytes, writing
from ssogen.generation.engine import Engine, EngineSettings, Request, RewardEngine
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.library import Templates, files_hash
from ssogen.inputs.models import BUNDLED_NAME, COMMIT, ModelRef, bundled_model, resolve_model, where
from ssogen.output.audit_summary import AUDIT_CONFIG, AUDIT_FILE, AUDIT_SCHEMA, PAIRS, sigmoid
from ssogen.output.readback import Build, load_build, single_value
from ssogen.output.store import SETTINGS_FILE, OutputFolder, rows_per_group
from ssogen.reading.judging import (
    JUDGE_TEMPLATE,
    PairwiseTemplate,
    both_orders,
    load_pairwise,
    reward_conversation,
    verdict,
)

logger = logging.getLogger(__name__)

JUDGE_KINDS = ("pairwise", "reward")
# Smallest context the judge engine reserves; longer prompts raise it (up to the judge's own limit).
MIN_CONTEXT = 2048


@dataclass
class AuditOptions:
    """The flags of `ssogen audit` (see `ssogen.cli`)."""

    target: str
    judge: str | None = None  # None: the build's own policy judges its pairs
    judge_kind: str = "pairwise"
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    prompts: Path | None = None
    output: Path | None = None
    push: str | bool | None = None  # True: the Hub id the build (or the target) names
    private: bool | None = None  # None: a new repo gets its namespace's default, an existing one keeps its own
    push_branch: str | None = None
    overwrite_round: bool = False
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None  # None: eager on CPU, compiled on GPU
    trust_remote_code: bool = False


@dataclass
class AuditPlan:
    """Everything an audit needs, checked before the engine starts."""

    options: AuditOptions
    build: Build
    rows: list[dict[str, Any]]  # the sso rows to judge, each with its split
    selection: str
    judge: ModelRef
    self_judging: bool
    chat: ChatFormat
    template: PairwiseTemplate | None  # pairwise judge only
    template_hash: str | None
    # pairwise: {pair: [(row index, [two prompts], index of the prompt showing the preferred answer first)]}
    pairwise: dict[str, list[tuple[int, list[list[int]], int]]] = field(default_factory=dict)
    # reward: {(row index, role): conversation ids}
    conversations: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # rows per pair too long for the judge's context
    max_model_len: int = MIN_CONTEXT
    push_to: str | None = None


@dataclass
class AuditResult:
    folder: Path
    table: pa.Table
    meta: dict[str, Any]
    build: Build  # the folder read back with its audit


# --- planning: every check before the engine ------------------------------------------------------------------


def plan_audit(options: AuditOptions, *, context_limit: int | None = None) -> AuditPlan:
    """Validate the flags and inputs and render every judge prompt; raises UsageError, writes nothing.

    ``context_limit``: the context of an engine the caller already holds (its max_model_len).
    """
    _check_options(options)
    build = load_build(options.target)
    if not build.kept:
        raise UsageError(
            f"{options.target} has no kept rows in data/sso ({build.message() or 'no sso config'}): nothing to audit."
        )
    push_to = _push_target(options, build)
    rows, selection = _select_rows(build, options)
    judge, self_judging = _resolve_judge(options, build)
    tokenizer = _judge_tokenizer(judge, options)
    _check_judge(judge, tokenizer, options.judge_kind)
    chat = ChatFormat(tokenizer)
    plan = AuditPlan(options, build, rows, selection, judge, self_judging, chat, None, None, push_to=push_to)
    if options.judge_kind == "pairwise":
        templates = _judge_templates(options)
        plan.template = load_pairwise(templates, chat)
        plan.template_hash = files_hash([templates.folder / JUDGE_TEMPLATE])
        plan.pairwise = {
            pair: [(index, *both_orders(plan.template, row, preferred, other)) for index, row in enumerate(rows)]
            for pair, (preferred, other) in PAIRS.items()
        }
        longest = max(len(p) for items in plan.pairwise.values() for _, prompts, _ in items for p in prompts)
    else:
        plan.conversations = {
            (index, role): reward_conversation(chat, row, role)
            for index, row in enumerate(rows)
            for role in ("chosen", "rejected", "original")
        }
        longest = max(len(ids) for ids in plan.conversations.values())
    model_limit = _model_context(judge, tokenizer)
    plan.max_model_len = (
        context_limit or options.max_model_len or min(model_limit, max(MIN_CONTEXT, _round_up(longest + 1)))
    )
    _drop_too_long(plan)
    return plan


def _check_options(options: AuditOptions) -> None:
    if options.judge_kind not in JUDGE_KINDS:
        raise UsageError(f"--judge-kind: {options.judge_kind!r} must be one of {', '.join(JUDGE_KINDS)}.")
    if options.limit is not None and options.sample is not None:
        raise UsageError("--limit and --sample: give one of them (the first N rows, or N rows drawn at random).")
    for flag, value in (("--limit", options.limit), ("--sample", options.sample)):
        if value is not None and value < 1:
            raise UsageError(f"{flag}: {value} must be at least 1 (or left out to judge every row).")
    if options.max_model_len is not None and options.max_model_len < 256:
        raise UsageError(f"--max-model-len: {options.max_model_len} is too small for a judge prompt; give 256 or more.")
    if options.prompts is not None and not options.prompts.is_dir():
        raise UsageError(f"--prompts: {options.prompts} is not a folder of Jinja templates.")
    if not Path(options.target).expanduser().exists() and options.output is None:
        raise UsageError(
            f"--output: {options.target} is not a local folder, so a Hub dataset: give --output DIR, the folder it "
            "is downloaded into and the audit written to."
        )
    if options.output is not None:
        out = Path(options.output)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--output: {out} exists and is not an empty folder; give a new folder.")


def _judge_templates(options: AuditOptions) -> Templates:
    if options.prompts is not None and not (options.prompts / JUDGE_TEMPLATE).is_file():
        raise UsageError(
            f"--prompts: {options.prompts} has no {JUDGE_TEMPLATE}; copy it from ssogen's prompts/ and edit it."
        )
    return Templates(options.prompts, required=(JUDGE_TEMPLATE,))


def _push_target(options: AuditOptions, build: Build) -> str | None:
    from ssogen.hubmeta import validate_repo_id

    hub = not Path(options.target).expanduser().exists()
    if options.push is None or options.push is False:
        return None
    if isinstance(options.push, str):
        return validate_repo_id(options.push)
    known = build.settings.get("settings", {}).get("push_to_hub") or (options.target if hub else None)
    if not known:
        raise UsageError(
            "--push: this build names no Hub dataset (it was not built with --push-to-hub); give one: --push ORG/NAME."
        )
    return validate_repo_id(known)


def _select_rows(build: Build, options: AuditOptions) -> tuple[list[dict[str, Any]], str]:
    rows = build.sso.to_pylist()
    for row, split in zip(rows, build.sso_splits or ["train"] * len(rows), strict=True):
        row["split"] = split
    if options.limit is not None:
        return rows[: options.limit], f"the first {min(options.limit, len(rows))} (--limit {options.limit})"
    if options.sample is not None and options.sample < len(rows):
        picked = sorted(random.Random(options.seed).sample(range(len(rows)), options.sample))
        return [
            rows[i] for i in picked
        ], f"{options.sample} drawn at random (--sample {options.sample}, seed {options.seed})"
    return rows, "all"


def _resolve_judge(options: AuditOptions, build: Build) -> tuple[ModelRef, bool]:
    """The judge model and whether it is the build's own policy (self-judging)."""
    name = build.run.get("model") or single_value(build.sso, "model")
    revision = build.run.get("model_revision")
    if options.judge:
        try:
            judge = resolve_model(options.judge, trust_remote_code=options.trust_remote_code)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--model:", "--judge:", 1)) from None
        return judge, (judge.name, judge.revision) == (name, revision)
    spec = build.settings.get("settings", {}).get("model")
    try:
        if spec is None and name in (None, BUNDLED_NAME):
            judge = bundled_model()
        else:
            # A Hub policy is judged at the commit the build loaded, not at what its branch names today (a build
            # from before `model_commit` recorded the commit as its revision).
            commit = build.run.get("model_commit") or (revision if COMMIT.fullmatch(str(revision)) else None)
            judge = resolve_model(spec or name, trust_remote_code=options.trust_remote_code, commit=commit)
    except UsageError as exc:
        raise UsageError(
            f"the build's policy {spec or name} (recorded in its {SETTINGS_FILE}) cannot be loaded here ({exc}); "
            "pass --judge MODEL to judge with another model."
        ) from None
    return judge, True


def _check_judge(judge: ModelRef, tokenizer: Any, kind: str) -> None:
    """The judge fits its kind: a chat model with a chat template, or a one-label sequence classifier."""
    architectures = _architectures(judge)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if kind == "reward" and not is_classifier:
        raise UsageError(
            f"--judge-kind reward: {judge.name} is a {', '.join(architectures) or 'model without architectures'}, "
            "not a sequence-classification reward model (*ForSequenceClassification with one label)."
        )
    if kind == "pairwise" and is_classifier:
        raise UsageError(
            f"--judge: {judge.name} is a sequence-classification model; use --judge-kind reward for reward models."
        )
    if kind == "reward":
        _check_single_label(judge)
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            f"--judge: {judge.name} has no chat template (its tokenizer_config.json or chat_template.jinja defines "
            "none); the judge reads the pair as a chat conversation, so give a chat/instruct model as --judge."
        )


def _judge_tokenizer(judge: ModelRef, options: AuditOptions) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            judge.path, revision=judge.commit, trust_remote_code=options.trust_remote_code
        )
    except Exception as exc:
        raise UsageError(f"--judge: could not load a tokenizer from {where(judge)}: {exc}") from None


def _config(judge: ModelRef) -> dict[str, Any]:
    try:
        if judge.commit:  # a Hub model: its config.json at the commit (from the cache once fetched)
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(judge.path, "config.json", revision=judge.commit))
        else:
            path = Path(judge.path) / "config.json"
        return json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # a missing or unreadable file, or the Hub's answer
        raise UsageError(f"--judge: cannot read the config.json of {where(judge)}: {exc}") from None


def _architectures(judge: ModelRef) -> list[str]:
    return [str(a) for a in _config(judge).get("architectures") or []]


def _check_single_label(judge: ModelRef) -> None:
    config = _config(judge)
    labels = config.get("num_labels") or len(config.get("id2label") or {"0": "score"})
    if labels != 1:
        raise UsageError(
            f"--judge: {judge.name} is a classifier with {labels} labels; a reward model scores with exactly one."
        )


def _model_context(judge: ModelRef, tokenizer: Any) -> int:
    config = _config(judge)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return int(min(getattr(tokenizer, "model_max_length", 4096), 1 << 20))


def _round_up(n: int, step: int = 256) -> int:
    return -(-n // step) * step


def _drop_too_long(plan: AuditPlan) -> None:
    """Leave out the rows whose prompts do not fit the judge's context (counted, never silently)."""
    room = plan.max_model_len - 1  # the verdict is one more position
    for pair, items in plan.pairwise.items():
        kept = [item for item in items if all(len(p) <= room for p in item[1])]
        plan.skipped[pair] = len(items) - len(kept)
        plan.pairwise[pair] = kept
    if plan.conversations:
        too_long = {index for (index, _), ids in plan.conversations.items() if len(ids) > room}
        for pair in PAIRS:
            plan.skipped[pair] = len(too_long)
        plan.conversations = {k: v for k, v in plan.conversations.items() if k[0] not in too_long}
    if all(plan.skipped[pair] == len(plan.rows) for pair in PAIRS):
        raise UsageError(
            f"--max-model-len: no judge prompt fits {plan.max_model_len} tokens; give a larger --max-model-len."
        )


# --- judging --------------------------------------------------------------------------------------------------


def engine_settings(plan: AuditPlan, log_file: str | None = None) -> EngineSettings:
    o = plan.options
    return EngineSettings(
        log_file=log_file,
        model=plan.judge.path,
        revision=plan.judge.commit,
        dtype=o.dtype,
        max_model_len=plan.max_model_len,
        tensor_parallel_size=o.tensor_parallel_size,
        gpu_memory_utilization=o.gpu_memory_utilization,
        enforce_eager=o.enforce_eager,
        trust_remote_code=o.trust_remote_code,
    )


def judge(plan: AuditPlan, engine: Engine) -> list[dict[str, Any]]:
    """Judge every planned pair; returns the rows of the `audit` config (schema `AUDIT_SCHEMA`)."""
    if plan.template is not None:
        return _judge_pairwise(plan, engine)
    if not isinstance(engine, RewardEngine):
        raise TypeError("a reward audit needs a RewardEngine")
    return _judge_reward(plan, engine)


def _judge_pairwise(plan: AuditPlan, engine: Engine) -> list[dict[str, Any]]:
    assert plan.template is not None
    out = []
    for pair, items in plan.pairwise.items():
        # One engine call per pair, from an empty prefix cache: the same pair's prompts then run in the same
        # batches on every run (see `ssogen.reading.judging.both_orders`), whatever else was judged before.
        engine.reset_prefix_cache()
        requests = [
            Request(ids, seed=0, max_tokens=1, temperature=0.0, logprob_token_ids=plan.template.label_ids)
            for _, prompts, _ in items
            for ids in prompts
        ]
        completions = iter(engine.generate(requests, desc=f"audit {pair}"))
        label_a, label_b = plan.template.label_ids
        for index, _, first in items:
            pair_logprobs = []
            for _ in range(2):
                labels = next(completions).label_logprobs or {}
                pair_logprobs.append((labels[label_a], labels[label_b]))
            v = verdict(pair_logprobs[first], pair_logprobs[1 - first])
            out.append(_audit_row(plan, plan.rows[index], pair, **asdict(v), position_consistent=v.position_consistent))
    return out


def _judge_reward(plan: AuditPlan, engine: RewardEngine) -> list[dict[str, Any]]:
    keys = list(plan.conversations)
    scores = dict(zip(keys, engine.rewards([plan.conversations[k] for k in keys]), strict=True))
    out = []
    for pair, (preferred, other) in PAIRS.items():
        for index, row in enumerate(plan.rows):
            if (index, preferred) not in scores:
                continue  # too long for the judge
            margin = scores[index, preferred] - scores[index, other]
            out.append(
                _audit_row(
                    plan,
                    row,
                    pair,
                    p=sigmoid(margin),
                    margin=margin,
                    reward_preferred=scores[index, preferred],
                    reward_other=scores[index, other],
                )
            )
    return out


def _audit_row(plan: AuditPlan, row: dict[str, Any], pair: str, **verdict_columns: Any) -> dict[str, Any]:
    preferred, other = PAIRS[pair]
    values = {
        "prompt_id": row["prompt_id"],
        "pair": pair,
        "preferred": preferred,
        "other": other,
        "agrees": verdict_columns["p"] > 0.5,
        "tokens_preferred": row[f"tokens_{preferred}"],
        "tokens_other": row[f"tokens_{other}"],
        "weight": row["weight"],
        "features": list(row["features"]),
        "judge": plan.judge.name,
        "judge_kind": plan.options.judge_kind,
        "round": row.get("round"),
        "split": row["split"],
        **verdict_columns,
    }
    return {name: values.get(name) for name in [*AUDIT_SCHEMA.names, "split"]}


# --- writing and publishing -----------------------------------------------------------------------------------


def audit_meta(
    plan: AuditPlan, rows: list[dict[str, Any]], *, start_seconds: float | None, judge_seconds: float
) -> dict[str, Any]:
    """What ``audit.yaml`` records: the judge, the rows, and the cost beside what the build generated."""
    prompts = [p for items in plan.pairwise.values() for _, two, _ in items for p in two]
    prompts += list(plan.conversations.values())
    judged = {r["prompt_id"] for r in rows}
    generated = sum(
        r[f"tokens_{role}"]
        for r in plan.rows
        if r["prompt_id"] in judged
        for role in ("chosen", "rejected", "original")
    )
    template = plan.template
    return {
        "ssogen_version": __version__,
        "judge": {
            "model": plan.judge.name,
            "revision": plan.judge.revision,
            "kind": plan.options.judge_kind,
            "self_judging": plan.self_judging,
            "template": JUDGE_TEMPLATE if template else None,
            "template_hash": plan.template_hash,
            "labels": list(template.labels) if template else None,
            "answer_prefix": template.answer_prefix if template else None,
            "max_model_len": plan.max_model_len,
        },
        "rows": {
            "kept_in_build": plan.build.kept,
            "audited": len(judged),
            "selection": plan.selection,
            "skipped_too_long": dict(plan.skipped),
        },
        "cost": {
            "engine_start_seconds": None if start_seconds is None else round(start_seconds, 2),
            "judge_seconds": round(judge_seconds, 2),
            "prompts": len(prompts),
            "prompt_tokens": sum(len(p) for p in prompts),
            "build_generated_tokens": generated,
            # `ssogen build` prints its time but does not record it in the folder (see the README).
            "build_seconds": None,
        },
    }


def write_audit(folder: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, int]:
    """Write the `audit` config (one Parquet file per split, as the sso rows are split) and ``audit.yaml``.

    One file per split (``data/audit/<split>-00000-of-00001.parquet``, Hub-named, written atomically); a split
    an earlier audit had and this one lacks is removed. Returns {split: rows}.
    """
    by_split: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append({k: v for k, v in row.items() if k != "split"})
    config_dir = folder / "data" / AUDIT_CONFIG
    for stale in config_dir.glob("*.parquet"):
        if stale.name.split("-")[0] not in by_split:
            stale.unlink()
    for split, split_rows in by_split.items():
        table = pa.Table.from_pylist(split_rows, schema=AUDIT_SCHEMA)
        path = config_dir / f"{split}-00000-of-00001.parquet"
        with writing(path, "writing the audit"):
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp, row_group_size=rows_per_group(table))
    atomic_write_bytes(folder / AUDIT_FILE, yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).encode())
    return {split: len(r) for split, r in by_split.items()}


def refresh_card(build: Build, folder: Path, repo_id: str | None) -> bool:
    """Render the folder's README.md again, now with the audit section and the `audit` config listed.

    Uses the card template of the build's own ``--prompts`` when that folder is still there. Returns False
    (card left as it was) for a folder whose settings are not an ssogen build's.
    """
    from ssogen.output.card import render_card
    from ssogen.output.plots import render_plots

    settings = build.settings
    if not isinstance(settings.get("run"), dict):
        return False
    config = settings.get("settings", {})
    prompts = Path(config["prompts"]) if config.get("prompts") and Path(config["prompts"]).is_dir() else None
    plots: list[str] = []
    if (folder / "plots").is_dir():  # built with --card-plots: draw them again, the audit's among them
        written = render_plots(build, folder / "plots")
        plots = [f"plots/{path.name}" for path in written.values()]
    counts = {c: {s: n for s, n in splits.items() if n is not None} for c, splits in build.counts.items()}
    card = render_card(
        Templates(prompts),
        records=build.sso,
        dropped=build.dropped,
        counts=counts,
        settings=settings,
        repo_id=repo_id or config.get("push_to_hub"),
        parent=config.get("parent"),
        license=config.get("license", "other"),
        plots=plots,
        audit={"meta": build.audit_meta, "pairs": build.audit_summary},
    )
    atomic_write_bytes(folder / "README.md", card.encode("utf-8"))
    return True


def _prepare_output(plan: AuditPlan) -> Path:
    """The folder the audit is written to: the target itself, or a copy (a folder) or download (a Hub id)."""
    options = plan.options
    source = Path(options.target).expanduser()
    if options.output is None:
        return source
    out = Path(options.output)
    if source.exists():
        shutil.copytree(source, out, ignore=shutil.ignore_patterns(".ssogen"), dirs_exist_ok=True)
    else:
        import huggingface_hub

        huggingface_hub.snapshot_download(options.target, repo_type="dataset", local_dir=out)
        shutil.rmtree(out / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not the dataset's
    return out


# --- the command ----------------------------------------------------------------------------------------------


def run_audit(
    options: AuditOptions,
    *,
    console: Console | None = None,
    engine: Engine | None = None,
    engine_log: str | None = None,
) -> AuditResult:
    """Plan, judge, write, print and (if asked) publish an audit.

    ``engine``: a judge engine already running (tests share one); it must hold the judge model.
    ``engine_log``: a file for vLLM's own output when the audit starts its engine (None: the terminal).
    """
    from ssogen.reading.tables import audit_table

    console = console or Console()
    plan = plan_audit(options, context_limit=engine.settings.max_model_len if engine is not None else None)
    if engine is not None and engine.settings.model != plan.judge.path:
        raise ValueError(f"the engine holds {engine.settings.model}, the audit's judge is {plan.judge.path}")
    logger.info("audit: judging %d rows with %s (%s)", len(plan.rows), plan.judge.name, options.judge_kind)
    start: float | None = None  # an engine handed in was started before (and for more than) this audit
    if engine is None:
        kind = RewardEngine if options.judge_kind == "reward" else Engine
        with kind(engine_settings(plan, engine_log)) as own:
            start = own.stats.start_seconds
            rows, seconds = _timed_judge(plan, own)
    else:
        rows, seconds = _timed_judge(plan, engine)
    meta = audit_meta(plan, rows, start_seconds=start, judge_seconds=seconds)
    folder = _prepare_output(plan)
    # One writer per folder: no build re-exports it while the audit writes into it (ssogen.output.lock).
    with OutputFolder(folder).lock("ssogen audit"):
        write_audit(folder, rows, meta)
        written = load_build(str(folder))
        card = refresh_card(written, folder, plan.push_to)
        if not card:
            logger.warning("audit: %s has no build settings; its README.md was left as it was", folder)
        written = load_build(str(folder))  # with the card's config list
    console.print(audit_table(written))
    console.print(Text(f"audit written to {folder} (data/{AUDIT_CONFIG}, {AUDIT_FILE}, README.md)"))
    if plan.push_to:
        from ssogen.hub.publish import push_folder

        round_number = written.round if isinstance(written.round, int) else 0
        result = push_folder(
            folder,
            plan.push_to,
            round=round_number,
            private=options.private,
            push_branch=options.push_branch,
            overwrite_round=options.overwrite_round,
        )
        console.print(Text(result.line()))
    return AuditResult(folder, written.audit, meta, written)


def _timed_judge(plan: AuditPlan, engine: Engine) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    rows = judge(plan, engine)
    return rows, time.perf_counter() - started
