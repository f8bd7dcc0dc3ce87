"""`ssogen build`: run a planned build on one engine (or a Ray pool), save its chunks, write the folder.

Owns: which queries are left to do (resume), the build loop (the continuous flow of `ssogen.generation.flow`, each
finished chunk saved as it completes, so a stopped run resumes where it was), where the engine's own
output goes (a log file in the folder's working state), the dry run, and the closing summary.
Validating settings and inputs is `ssogen.generation.plan`; one query's stages are `ssogen.generation.stages`.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm import tqdm

from ssogen.config import BuildConfig
from ssogen.generation.engine import Engine
from ssogen.generation.flow import dry_run_prompts, flow_chunks, prepare
from ssogen.generation.plan import Plan, engine_settings, plan_build
from ssogen.generation.stages import dropped_row
from ssogen.inputs.sources import QueryStats, iter_queries, query_source_options
from ssogen.output.export import export_folder
from ssogen.output.store import OutputFolder

logger = logging.getLogger(__name__)

ENGINE_LOG = ".ssogen/engine.log"  # vLLM's own output, kept out of the terminal (see `engine_log`)


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
    engine_start_seconds: float = 0.0
    steps: int = 0  # engine steps that produced tokens, and the sequences per such step
    sequences_per_step: float = 0.0
    loops_aborted: int = 0  # answers the loop watch ended while they were written
    abandoned: int = 0  # answers left unfinished because their query was already dropped for a loop
    abandoned_tokens: int = 0  # tokens the engine had generated for those when they were left
    engine_log: str | None = None
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
                f"({self.tokens_per_second:.1f} tok/s); {self.steps} engine steps, "
                f"{self.sequences_per_step:.1f} sequences per step; engine start {self.engine_start_seconds:.1f}s; "
                f"{self.loops_aborted} answers aborted as loops while written, "
                f"{self.abandoned} abandoned as their query was dropped ({self.abandoned_tokens} tokens generated "
                "for them by then)"
            ),
            f"saving chunks {self.save_seconds:.2f}s; wall {self.wall_seconds:.1f}s",
            *([f"vLLM's own output: {self.engine_log}"] if self.engine_log else []),
        ]


def build(
    config: BuildConfig, *, overwrite: bool = False, engine_log: bool = True, engine: Engine | None = None
) -> BuildSummary:
    """Run a whole build: plan, generate every unfinished query, write the folder's tables and card.

    ``engine_log``: send vLLM's own output to `ENGINE_LOG` in the folder (False: leave it on the terminal).
    ``engine``: an engine already running the build's model (several builds in one process share it; the
    summary then counts only this build's share of its figures). None: the build starts its own.
    """
    # One writer per output folder (ssogen.output.lock): a second build on it stops at once with exit 2.
    with OutputFolder(config.output).lock("ssogen build"):
        return _build(config, overwrite=overwrite, engine_log=engine_log, engine=engine)


def _build(config: BuildConfig, *, overwrite: bool, engine_log: bool, engine: Engine | None) -> BuildSummary:
    started = time.perf_counter()
    plan = plan_build(config, resume=not overwrite)
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
        plan.folder.write_chunk([dropped_row(plan, q, [], "empty_query") for q in empties])

    log_file = str(plan.folder.root / ENGINE_LOG) if engine_log else None
    summary.engine_log = log_file if todo and config.executor == "local" else None
    if todo and config.executor == "ray":
        from ssogen.generation.distributed import ray_chunks

        summary.remote_engine = True
        total = -(-len(todo) // config.chunk_size)
        for number, rows in enumerate(ray_chunks(config, todo, model_commit=plan.model.commit), start=1):
            summary.save_seconds += _save_chunk(plan.folder, rows)
            logger.info("chunk %d/%d done (%d queries, ray)", number, total, len(rows))
    elif todo and engine is not None:
        if engine.settings.model != engine_settings(config, plan.model).model:
            raise ValueError(f"the engine holds {engine.settings.model}, the build's model is {plan.model.path}")
        summary.engine_log = None
        _generate_counted(engine, plan, todo, summary)
    elif todo:
        with Engine(engine_settings(config, plan.model, log_file=log_file)) as own:
            summary.engine_start_seconds = own.stats.start_seconds
            _generate_counted(own, plan, todo, summary)

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


def _generate_counted(engine: Engine, plan: Plan, todo: list, summary: BuildSummary) -> None:
    """`_generate`, with the engine's figures for this build's share of its work in the summary."""
    before = replace(engine.stats, tokens_by_call=Counter(), tokens_in_flight=Counter())
    _generate(engine, plan, todo, summary)
    after = engine.stats
    summary.generated_tokens = after.generated_tokens - before.generated_tokens
    summary.generate_seconds = (after.generate_seconds + after.score_seconds) - (
        before.generate_seconds + before.score_seconds
    )
    summary.steps = after.steps - before.steps
    sequences = after.step_sequences - before.step_sequences
    summary.sequences_per_step = sequences / summary.steps if summary.steps else 0.0
    summary.loops_aborted = after.loops_aborted - before.loops_aborted
    summary.abandoned = after.abandoned - before.abandoned
    summary.abandoned_tokens = after.abandoned_tokens - before.abandoned_tokens


def _generate(engine: Engine, plan: Plan, todo: list, summary: BuildSummary) -> None:
    """Every unfinished query through the flow on this engine, each chunk saved the moment it is complete."""
    config = plan.config
    total = -(-len(todo) // config.chunk_size)
    setup = prepare(engine, plan)
    with tqdm(total=len(todo), desc="queries", unit="q", leave=False) as bar:
        chunks = flow_chunks(engine, setup, todo, chunk_size=config.chunk_size, reproducible=config.reproducible)
        for number, rows in enumerate(chunks, start=1):
            summary.save_seconds += _save_chunk(plan.folder, rows)
            bar.update(len(rows))
            bar.clear()
            logger.info("chunk %d/%d done (%d queries)", number, total, len(rows))


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
    """Render and tokenise every prompt of a build, query by query, with no engine and no output.

    Queries stream from the source, so memory holds one query at a time (plus the ids seen, for
    deduplication). With no engine, features are drawn at random and principles come from the library.
    """
    plan = plan_build(config, load_queries_now=False)
    setup = prepare(None, plan)
    summary = DryRunSummary()
    stats = QueryStats()
    started = time.perf_counter()
    milestone = 1000
    for query in iter_queries(config.queries, config.query_column, config.limit, stats, **query_source_options(config)):
        if query.prompt:
            prompts = dry_run_prompts(setup, query)
            summary.queries += 1
            summary.prompts += len(prompts)
            summary.prompt_tokens += sum(map(len, prompts))
        if stats.rows >= milestone:
            summary.peak_rss_mib.append((stats.rows, peak_rss_mib()))
            logger.info("dry-run: %d queries rendered, peak RSS %.0f MiB", stats.rows, peak_rss_mib())
            milestone *= 10
    summary.seconds = time.perf_counter() - started
    summary.peak_rss_mib.append((stats.rows, peak_rss_mib()))
    return summary


def _save_chunk(folder: OutputFolder, rows: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    folder.write_chunk(rows)
    return time.perf_counter() - started
