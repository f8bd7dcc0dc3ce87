"""`ssogen build`: plans a build, runs its chunks on one engine, and writes the folder.

Owns: validating every setting and input before an engine starts (`plan_build`), the settings a resume
must match, which queries are left to do, the chunk loop (each finished chunk is saved before the next
starts, so a stopped run resumes where it was), the dry run, and the closing summary. What happens
inside a chunk is `ssogen.chunk`.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from ssogen import __version__
from ssogen.chat import ChatFormat
from ssogen.chunk import dropped_row, prepare_chunk, run_chunk
from ssogen.config import BuildConfig
from ssogen.engine import Engine, EngineSettings
from ssogen.errors import UsageError
from ssogen.export import export_folder
from ssogen.library import GENERATION_TEMPLATES, Feature, Templates, files_hash, load_library, resource_dir
from ssogen.models import ModelRef, resolve_model
from ssogen.sources import Query, QuerySet, QueryStats, iter_queries, load_queries
from ssogen.store import OutputFolder, ids_digest

logger = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    """What a build did, for the closing log lines and for callers."""

    total: int = 0
    resumed: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    mean_weight: float = math.nan
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    score_seconds: float = 0.0
    engine_start_seconds: float = 0.0
    save_seconds: float = 0.0  # writing finished chunks (the cost of being resumable)
    remote_engine: bool = False  # the engines ran in Ray replicas, whose figures this process does not see
    wall_seconds: float = 0.0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0

    def lines(self) -> list[str]:
        drops = ", ".join(f"{reason}={n}" for reason, n in sorted(self.dropped.items())) or "none"
        return [
            f"queries: {self.total} ({self.resumed} resumed from earlier runs, {self.duplicates} duplicates removed)",
            f"kept: {self.kept}  dropped: {sum(self.dropped.values())} ({drops})",
            f"mean W: {self.mean_weight:.4f}",
            (
                "engine figures: in the Ray replicas (see their logs)"
                if self.remote_engine
                else f"tokens generated: {self.generated_tokens} in {self.generate_seconds:.1f}s "
                f"({self.tokens_per_second:.1f} tok/s); scoring {self.score_seconds:.1f}s; "
                f"engine start {self.engine_start_seconds:.1f}s"
            ),
            f"saving chunks {self.save_seconds:.2f}s; wall {self.wall_seconds:.1f}s",
        ]


@dataclass
class Plan:
    """Everything a build needs, loaded and validated before the engine starts."""

    config: BuildConfig
    model: ModelRef
    library: list[Feature]
    templates: Templates
    queries: QuerySet
    folder: OutputFolder
    settings: dict[str, Any]
    chat: ChatFormat


def plan_build(config: BuildConfig, *, load_queries_now: bool = True) -> Plan:
    """Validate settings and load every input; nothing here starts an engine or writes output.

    ``load_queries_now=False`` leaves the queries to be streamed (the dry run); they are still opened and
    their first row checked, so a bad query file fails here.
    """
    config.validate()
    library = load_library(config.principles)
    templates = Templates(config.prompts)
    selectable = [f for f in library if f.bound_probability == 0]
    if config.num_features > len(selectable):
        raise UsageError(
            f"--num-features: {config.num_features} is more than the {len(selectable)} selectable features "
            f"of the principle library; use at most {len(selectable)}."
        )
    queries_hash = None
    if load_queries_now:
        queries = load_queries(config.queries, config.query_column, config.limit)
        # Of the whole query list, before sharding: every shard of one build has the same fingerprint.
        queries_hash = ids_digest(q.prompt_id for q in queries.queries + queries.empty)
        if config.num_shards > 1:
            queries = shard(queries, config.num_shards, config.shard_index)
    else:
        next(iter_queries(config.queries, config.query_column, limit=1))
        queries = QuerySet(queries=[], empty=[], duplicates=0, source=config.queries or "bundled")
    model = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    folder = OutputFolder(config.output)
    settings = run_settings(config, model, templates, queries_hash)
    chat = ChatFormat(load_tokenizer(model, trust_remote_code=config.trust_remote_code))
    return Plan(config, model, library, templates, queries, folder, settings, chat)


def load_tokenizer(model: ModelRef, *, trust_remote_code: bool) -> Any:
    """The model's tokenizer, loaded before any engine so a model without a chat template fails fast."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model.path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise UsageError(f"--model: could not load a tokenizer from {model.path}: {exc}") from None


def shard_of(prompt_id: str, num_shards: int) -> int:
    """The shard of a query: from its id alone, so N independent jobs cover every query exactly once."""
    return int(prompt_id, 16) % num_shards


def shard(queries: QuerySet, num_shards: int, index: int) -> QuerySet:
    def mine(q: Query) -> bool:
        return shard_of(q.prompt_id, num_shards) == index

    return QuerySet(
        queries=[q for q in queries.queries if mine(q)],
        empty=[q for q in queries.empty if mine(q)],
        duplicates=queries.duplicates,
        source=queries.source,
    )


def run_settings(
    config: BuildConfig, model: ModelRef, templates: Templates, queries_hash: str | None = None
) -> dict[str, Any]:
    """The exact settings recorded with the dataset; the fingerprint is what a resume must match.

    ``queries_hash`` (`ssogen.store.ids_digest` of the query list) makes the fingerprint cover the queries'
    content, not only their path: a resume never keeps rows of queries that were removed from the input.
    """
    principles = config.principles or resource_dir("principles")
    values = config.to_dict()
    fingerprint = {
        "ssogen_version": __version__,  # chunks of two versions never mix (each chunk also says what wrote it)
        "queries_hash": queries_hash,
        "model": model.name,
        "model_revision": model.revision,
        "queries": config.queries or "bundled",
        "query_column": config.query_column,
        "limit": config.limit,
        "num_shards": config.num_shards,
        "shard_index": config.shard_index,
        "seed": config.seed,
        "round": config.round,
        "alpha": config.alpha,
        "num_features": config.num_features,
        "generate_principles": config.generate_principles,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "selection_temperature": config.selection_temperature,
        "selection_max_tokens": config.selection_max_tokens,
        "principle_max_tokens": config.principle_max_tokens,
        "max_model_len": config.max_model_len,
        "dtype": config.dtype,
        "principles_hash": files_hash([*principles.glob("*.yaml"), *principles.glob("*.yml")]),
        "prompts_hash": files_hash([templates.folder / name for name in GENERATION_TEMPLATES]),
    }
    return {"ssogen_version": __version__, "run": fingerprint, "settings": values}


def build(config: BuildConfig, *, overwrite: bool = False) -> BuildSummary:
    """Run a whole build: plan, generate every unfinished chunk, write the `sso` and `dropped` tables."""
    # One writer per output folder (ssogen.lock): a second build on it stops at once with exit 2.
    with OutputFolder(config.output).lock("ssogen build"):
        return _build(config, overwrite=overwrite)


def _build(config: BuildConfig, *, overwrite: bool) -> BuildSummary:
    started = time.perf_counter()
    plan = plan_build(config)
    plan.folder.prepare(plan.settings, overwrite=overwrite)
    summary = BuildSummary(duplicates=plan.queries.duplicates)
    all_queries = plan.queries.queries + plan.queries.empty
    summary.total = len(all_queries)
    finished = plan.folder.resume()  # damaged or foreign chunks are set aside, their queries done again
    todo = [q for q in plan.queries.queries if q.prompt_id not in finished]
    summary.resumed = len(finished & {q.prompt_id for q in all_queries})
    if summary.resumed:
        logger.info("resuming: %d of %d queries already done in %s", summary.resumed, summary.total, config.output)
    empties = [q for q in plan.queries.empty if q.prompt_id not in finished]
    if empties:
        plan.folder.write_chunk([dropped_row(q, [], "empty_query", plan) for q in empties])

    if todo and config.executor == "ray":
        from ssogen.distributed import ray_chunks

        summary.remote_engine = True
        total = -(-len(todo) // config.chunk_size)
        for number, rows in enumerate(ray_chunks(config, todo), start=1):
            summary.save_seconds += _save_chunk(plan.folder, rows)
            logger.info("chunk %d/%d done (%d queries, ray)", number, total, len(rows))
    elif todo:
        chunks = [todo[i : i + config.chunk_size] for i in range(0, len(todo), config.chunk_size)]
        with Engine(engine_settings(config, plan.model)) as engine:
            summary.engine_start_seconds = engine.stats.start_seconds
            for number, chunk in enumerate(chunks, start=1):
                rows = run_chunk(engine, plan, chunk)
                summary.save_seconds += _save_chunk(plan.folder, rows)
                logger.info("chunk %d/%d done (%d queries)", number, len(chunks), len(chunk))
            summary.generated_tokens = engine.stats.generated_tokens
            summary.generate_seconds = engine.stats.generate_seconds
            summary.score_seconds = engine.stats.score_seconds

    exported = export_folder(
        plan.folder,
        [q.prompt_id for q in all_queries],
        templates=plan.templates,
        settings=plan.settings,
        seed=config.seed,
        test_size=config.test_size,
        license=config.license,
        repo_id=config.push_to_hub,
        parent=config.parent,
        card_plots=config.card_plots,
    )
    summary.counts = exported.counts
    summary.kept = exported.kept
    summary.dropped = exported.dropped
    summary.mean_weight = exported.mean_weight
    summary.wall_seconds = time.perf_counter() - started
    return summary


@dataclass
class DryRunSummary:
    """What `build --dry-run` rendered, how fast, and the peak memory along the way."""

    queries: int = 0
    prompts: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    peak_rss_mib: list[tuple[int, float]] = field(default_factory=list)  # (queries done, peak RSS so far)

    @property
    def queries_per_second(self) -> float:
        return self.queries / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        peak = self.peak_rss_mib[-1][1] if self.peak_rss_mib else 0.0
        return (
            f"dry-run: queries={self.queries} prompts={self.prompts} prompt_tokens={self.prompt_tokens} "
            f"queries_per_s={self.queries_per_second:.1f} peak_rss_mib={peak:.0f}"
        )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def dry_run(config: BuildConfig) -> DryRunSummary:
    """Render and tokenise every prompt of a build, chunk by chunk, with no engine and no output.

    Queries stream from the source, so memory holds one chunk (plus the ids seen, for deduplication).
    """
    plan = plan_build(config, load_queries_now=False)
    summary = DryRunSummary()
    stats = QueryStats()
    started = time.perf_counter()
    milestone = 1000
    chunk: list[Query] = []

    def render(batch: list[Query]) -> None:
        work = prepare_chunk(None, plan, batch)
        summary.queries += len(batch)
        summary.prompts += 4 * len(batch)  # selection, x+, x- and x
        summary.prompt_tokens += sum(len(ids) for by_role in work.prompts.values() for ids in by_role.values())

    for query in iter_queries(config.queries, config.query_column, config.limit, stats):
        if query.prompt:
            chunk.append(query)
        if len(chunk) == config.chunk_size:
            render(chunk)
            chunk = []
        if stats.rows >= milestone:
            summary.peak_rss_mib.append((stats.rows, peak_rss_mib()))
            logger.info("dry-run: %d queries rendered, peak RSS %.0f MiB", stats.rows, peak_rss_mib())
            milestone *= 10
    if chunk:
        render(chunk)
    summary.seconds = time.perf_counter() - started
    summary.peak_rss_mib.append((stats.rows, peak_rss_mib()))
    return summary


def _save_chunk(folder: OutputFolder, rows: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    folder.write_chunk(rows)
    return time.perf_counter() - started


def engine_settings(config: BuildConfig, model: ModelRef) -> EngineSettings:
    """The engine's settings: every `EngineSettings` field is a `BuildConfig` field of the same name."""
    shared = {f.name: getattr(config, f.name) for f in fields(EngineSettings) if f.name != "model"}
    return EngineSettings(model=model.path, **shared)
