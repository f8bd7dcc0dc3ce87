"""`ssogen build`: runs the SSO stages over the queries, chunk by chunk, on one engine.

Owns: the order of the stages and what goes to the engine together. Per chunk: one call selects the
features of every query; (optionally) one call writes query-specific principles; one call samples y+,
y- and y° of every query at once; one call scores every kept answer under the bare query. Each finished
chunk is saved before the next starts, so a stopped run resumes where it was.
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
from ssogen.config import BuildConfig
from ssogen.engine import Completion, Engine, EngineSettings, Request
from ssogen.errors import UsageError
from ssogen.export import export_folder
from ssogen.library import GENERATION_TEMPLATES, Feature, Templates, files_hash, load_library, resource_dir
from ssogen.models import ModelRef, resolve_model
from ssogen.scoring import mean_logprob, weight
from ssogen.sources import Query, QuerySet, QueryStats, iter_queries, load_queries
from ssogen.steer import (
    ROLES,
    Principles,
    choose_features,
    derive_seed,
    drop_reason,
    library_principles,
    parse_features,
    parse_principles,
    principles_prompt,
    principles_schema,
    query_rng,
    selection_prompt,
    strip_label,
    system_message,
)
from ssogen.store import OutputFolder

logger = logging.getLogger(__name__)

SAMPLE_CALL = "sample y+ y- y°"  # the engine call of stage 4, named in progress bars and engine stats


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
    if load_queries_now:
        queries = load_queries(config.queries, config.query_column, config.limit)
        if config.num_shards > 1:
            queries = shard(queries, config.num_shards, config.shard_index)
    else:
        next(iter_queries(config.queries, config.query_column, limit=1))
        queries = QuerySet(queries=[], empty=[], duplicates=0, source=config.queries or "bundled")
    model = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    folder = OutputFolder(config.output)
    settings = run_settings(config, model, templates)
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


def run_settings(config: BuildConfig, model: ModelRef, templates: Templates) -> dict[str, Any]:
    """The exact settings recorded with the dataset; the fingerprint is what a resume must match."""
    principles = config.principles or resource_dir("principles")
    values = config.to_dict()
    fingerprint = {
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
    started = time.perf_counter()
    plan = plan_build(config)
    plan.folder.prepare(plan.settings, overwrite=overwrite)
    summary = BuildSummary(duplicates=plan.queries.duplicates)
    all_queries = plan.queries.queries + plan.queries.empty
    summary.total = len(all_queries)
    finished = plan.folder.finished_ids()
    todo = [q for q in plan.queries.queries if q.prompt_id not in finished]
    summary.resumed = len(finished & {q.prompt_id for q in all_queries})
    if summary.resumed:
        logger.info("resuming: %d of %d queries already done in %s", summary.resumed, summary.total, config.output)
    empties = [q for q in plan.queries.empty if q.prompt_id not in finished]
    if empties:
        plan.folder.write_chunk(
            plan.folder.next_chunk_index(), [_dropped_row(q, [], "empty_query", plan) for q in empties]
        )

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

    kept, dropped = plan.folder.split_chunks([q.prompt_id for q in all_queries])
    summary.counts = export_folder(
        plan.folder,
        kept,
        dropped,
        templates=plan.templates,
        settings=plan.settings,
        seed=config.seed,
        test_size=config.test_size,
        license=config.license,
        repo_id=config.push_to_hub,
        parent=config.parent,
        card_plots=config.card_plots,
    )
    summary.kept = kept.num_rows
    summary.dropped = Counter(dropped.column("reason").to_pylist())
    weights = kept.column("weight").to_pylist()
    summary.mean_weight = sum(weights) / len(weights) if weights else math.nan
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
    folder.write_chunk(folder.next_chunk_index(), rows)
    return time.perf_counter() - started


def engine_settings(config: BuildConfig, model: ModelRef) -> EngineSettings:
    """The engine's settings: every `EngineSettings` field is a `BuildConfig` field of the same name."""
    shared = {f.name: getattr(config, f.name) for f in fields(EngineSettings) if f.name != "model"}
    return EngineSettings(model=model.path, **shared)


@dataclass
class ChunkWork:
    """A chunk after the stages that come before sampling."""

    queries: list[Query]
    features: dict[str, list[Feature]]
    principles: dict[str, list[Principles]]
    systems: dict[str, tuple[str, str]]  # prompt_id -> (p+, p-)
    prompts: dict[str, dict[str, list[int]]]  # prompt_id -> role -> token ids of x+, x- and x
    too_long: set[str]  # prompt_ids whose prompts leave no room for an answer


def prepare_chunk(engine: Engine | None, plan: Plan, chunk: list[Query]) -> ChunkWork:
    """Stages 1-3: select features, get principles, build the contrastive prompts.

    With no engine (``--dry-run``) every prompt is still rendered and tokenised, the selection answers are
    empty (so features are drawn at random) and principles come from the library.
    """
    config, chat = plan.config, plan.chat

    # 1. Feature selection: one call for the whole chunk.
    selection = [
        chat.prompt_ids(
            [{"role": "user", "content": selection_prompt(plan.templates, plan.library, q.prompt, config.num_features)}]
        )
        for q in chunk
    ]
    fits = [len(ids) + config.selection_max_tokens <= config.max_model_len for ids in selection]
    asks = [
        Request(
            ids,
            derive_seed(config.seed, q.prompt_id, "select"),
            config.selection_max_tokens,
            temperature=config.selection_temperature,
            top_p=1.0,
            stop=("\n",),  # the answer is one line of names; anything after it is never read
        )
        for q, ids, ok in zip(chunk, selection, fits, strict=True)
        if ok
    ]
    answers = iter(engine.generate(asks, desc="select features") if engine else [])
    features: dict[str, list[Feature]] = {}
    for q, ok in zip(chunk, fits, strict=True):
        text = next(answers).text if ok and engine else ""
        features[q.prompt_id] = choose_features(
            parse_features(text, plan.library), plan.library, config.num_features, query_rng(config.seed, q.prompt_id)
        )

    # 2. Principles: the library's, or query-specific ones written by the policy.
    principles = {q.prompt_id: library_principles(features[q.prompt_id]) for q in chunk}
    if config.generate_principles and engine is not None:
        principles.update(_write_principles(engine, plan, chunk, features))

    # 3. Contrastive prompts x+, x-, x through the model's chat template.
    prompts: dict[str, dict[str, list[int]]] = {}
    systems: dict[str, tuple[str, str]] = {}
    for q in chunk:
        pos = system_message(plan.templates, features[q.prompt_id], principles[q.prompt_id], "positive")
        neg = system_message(plan.templates, features[q.prompt_id], principles[q.prompt_id], "negative")
        systems[q.prompt_id] = (pos, neg)
        messages = q.messages()
        prompts[q.prompt_id] = {
            "chosen": chat.prompt_ids(chat.with_system(pos, messages)),
            "rejected": chat.prompt_ids(chat.with_system(neg, messages)),
            "original": chat.prompt_ids(messages),
        }
    room = config.max_model_len - config.max_new_tokens
    too_long = {pid for pid, by_role in prompts.items() if max(map(len, by_role.values())) > room}
    return ChunkWork(list(chunk), features, principles, systems, prompts, too_long)


def _write_principles(
    engine: Engine, plan: Plan, chunk: list[Query], features: dict[str, list[Feature]]
) -> dict[str, list[Principles]]:
    """Query-specific principles as JSON (structured output), one call for the chunk."""
    config, chat = plan.config, plan.chat
    asks = []
    for q in chunk:
        text = principles_prompt(plan.templates, features[q.prompt_id], q.prompt)
        ids = chat.prompt_ids([{"role": "user", "content": text}])
        if len(ids) + config.principle_max_tokens <= config.max_model_len:
            asks.append((q, ids))
    written = engine.generate(
        [
            Request(
                ids,
                derive_seed(config.seed, q.prompt_id, "principles"),
                config.principle_max_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                json_schema=principles_schema(features[q.prompt_id]),
            )
            for q, ids in asks
        ],
        desc="write principles",
    )
    return {
        q.prompt_id: parse_principles(answer.text, features[q.prompt_id])
        for (q, _), answer in zip(asks, written, strict=True)
    }


def sampling_requests(plan: Plan, work: ChunkWork) -> list[tuple[str, str, Request]]:
    """Stage 4's requests: (prompt_id, role, request) for y+, y- and y° of every query that fits."""
    config = plan.config
    return [
        (
            q.prompt_id,
            role,
            Request(
                work.prompts[q.prompt_id][role],
                derive_seed(config.seed, q.prompt_id, role),
                config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                # y° is sampled under x itself, so its sampled-token log-probs are π̃'s terms: no rescoring.
                logprobs=role == "original",
            ),
        )
        for q in work.queries
        if q.prompt_id not in work.too_long
        for role in ROLES
    ]


def run_chunk(
    engine: Engine, plan: Plan, chunk: list[Query], trace: list[Request] | None = None
) -> list[dict[str, Any]]:
    """The SSO stages for one chunk of queries; returns one row per query (kept or dropped), in chunk order.

    Stages 4-6 share one engine stream: a query is cleaned, filtered and its answers sent for scoring the
    moment its third answer is sampled, while the other queries are still decoding. ``trace``, when given,
    receives the sampling requests (the benchmark replays them).
    """
    work = prepare_chunk(engine, plan, chunk)
    requests = sampling_requests(plan, work)
    if trace is not None:
        trace.extend(request for *_, request in requests)
    stream = engine.stream(SAMPLE_CALL)
    for prompt_id, role, request in requests:
        stream.generate((prompt_id, role), request)

    answers: dict[str, dict[str, Completion]] = {}
    texts: dict[str, dict[str, str]] = {}
    reasons: dict[str, str] = {pid: "prompt_too_long" for pid in work.too_long}
    scores: dict[tuple[str, str], list[float]] = {}
    responses: dict[tuple[str, str], list[int]] = {}
    for key, result in stream:
        if key[0] == "score":  # 5b. a score came back
            scores[key[1:]] = result
            continue
        prompt_id, role = key  # 4. an answer came back
        answers.setdefault(prompt_id, {})[role] = result
        if len(answers[prompt_id]) < len(ROLES):
            continue
        # 5. All three answers are in: clean, filter, and send the kept ones for scoring under x.
        texts[prompt_id] = {r: strip_label(answers[prompt_id][r].text) for r in ROLES}
        reason = drop_reason(*(texts[prompt_id][r] for r in ROLES))
        if reason:
            reasons[prompt_id] = reason
            continue
        for r in ROLES:
            answer, text = answers[prompt_id][r], texts[prompt_id][r]
            # Score the very tokens the policy sampled; only a cleaned answer is tokenised again.
            unchanged = answer.text.strip() == text
            response = (
                list(answer.token_ids) if unchanged else plan.chat.response_ids(text, answer.finish_reason == "stop")
            )
            responses[prompt_id, r] = response
            if unchanged and answer.token_logprobs is not None:
                scores[prompt_id, r] = answer.token_logprobs
            else:
                stream.score(("score", prompt_id, r), work.prompts[prompt_id]["original"], response)

    # 6. π̃ and W, one row per query in chunk order.
    rows = []
    for q in work.queries:
        if q.prompt_id in reasons:
            rows.append(_dropped_row(q, work.features[q.prompt_id], reasons[q.prompt_id], plan))
        else:
            rows.append(_record(plan, work, q, answers[q.prompt_id], texts[q.prompt_id], scores, responses))
    return rows


def _record(
    plan: Plan,
    work: ChunkWork,
    q: Query,
    answers: dict[str, Completion],
    texts: dict[str, str],
    scores: dict[tuple[str, str], list[float]],
    responses: dict[tuple[str, str], list[int]],
) -> dict[str, Any]:
    pi = {role: mean_logprob(scores[q.prompt_id, role]) for role in ROLES}
    return {
        "prompt_id": q.prompt_id,
        "prompt": q.prompt,
        "context": [dict(m) for m in q.context],
        "features": [f.name for f in work.features[q.prompt_id]],
        "principle_source": _principle_source(work.principles[q.prompt_id]),
        "system_pos": work.systems[q.prompt_id][0],
        "system_neg": work.systems[q.prompt_id][1],
        **{role: texts[role] for role in ROLES},
        **{f"logp_{role}": pi[role] for role in ROLES},
        **{f"tokens_{role}": len(responses[q.prompt_id, role]) for role in ROLES},
        **{f"finish_{role}": answers[role].finish_reason for role in ROLES},
        "truncated": any(answers[role].finish_reason == "length" for role in ROLES),
        "weight": weight(pi["chosen"], pi["rejected"], plan.config.alpha),
        "alpha": plan.config.alpha,
        "model": plan.model.name,
        "round": plan.config.round,
        "drop_reason": None,
    }


def _principle_source(principles: list[Any]) -> str:
    sources = {p.source for p in principles}
    return sources.pop() if len(sources) == 1 else "mixed"


def _dropped_row(query: Query, features: list[Feature], reason: str, plan: Plan) -> dict[str, Any]:
    return {
        "prompt_id": query.prompt_id,
        "prompt": query.prompt,
        "context": [dict(m) for m in query.context],
        "features": [f.name for f in features],
        "model": plan.model.name,
        "round": plan.config.round,
        "alpha": plan.config.alpha,
        "truncated": False,
        "drop_reason": reason,
    }
