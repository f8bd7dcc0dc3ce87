"""One chunk of queries through the SSO stages on one engine.

Owns: the requests of each stage and the flow of a chunk. Each stage is one engine call over the whole
chunk: select features, write principles (optional), then every y+, y- and y° of the chunk in flight
together, then the scoring of every kept y+ and y- under the bare query, reusing the KV cache y° left for x.
Each call's requests are released to the engine together, so a chunk's batches, answers and scores are
the same on every run. `ssogen bench` measures how close this gets to one raw engine call over the same
requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ssogen.engine import Completion, Engine, Request
from ssogen.library import Feature
from ssogen.scoring import mean_logprob, weight
from ssogen.sources import Query
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
    selection_pattern,
    selection_prompt,
    strip_label,
    system_message,
)

if TYPE_CHECKING:
    from ssogen.pipeline import Plan

SAMPLE_CALL = "sample y+ y- y°"  # engine calls, named in progress bars and engine stats
SCORE_CALL = "score y+ y-"
SELECT_CALL = "select features"
PRINCIPLES_CALL = "write principles"
STEERED = ("chosen", "rejected")  # the roles whose prompts carry a steering message


# --- the requests of each stage, one query at a time -------------------------------------------------------
def _ask(
    plan: Plan, query: Query, purpose: str, text: str, max_tokens: int, answer_prefix: str = "", **sampling: Any
) -> Request | None:
    """A request for the policy's answer to one user turn, or None when the turn leaves no room for it."""
    ids = plan.chat.prompt_ids([{"role": "user", "content": text}], answer_prefix)
    if len(ids) + max_tokens > plan.config.max_model_len:
        return None
    return Request(ids, derive_seed(plan.config.seed, query.prompt_id, purpose), max_tokens, **sampling)


def selection_request(plan: Plan, query: Query) -> Request | None:
    """Stage 1's request, or None when the selection prompt leaves no room for its answer."""
    config = plan.config
    text, answer_prefix = selection_prompt(plan.templates, plan.library, query.prompt, config.num_features)
    return _ask(
        plan,
        query,
        "select",
        text,
        config.selection_max_tokens,
        answer_prefix,
        temperature=config.selection_temperature,
        top_p=1.0,
        regex=selection_pattern(plan.library, config.num_features),
        stop=("\n",),  # the answer is one line of names; anything after it is never read
    )


def pick_features(plan: Plan, query: Query, answer: str) -> list[Feature]:
    """The query's features from the selection answer ("" when there was none: drawn at random)."""
    config = plan.config
    recognised = parse_features(answer, plan.library)
    return choose_features(recognised, plan.library, config.num_features, query_rng(config.seed, query.prompt_id))


def principles_request(plan: Plan, query: Query, features: list[Feature]) -> Request | None:
    """Stage 2's request (query-specific principles as JSON), or None when it does not fit the context."""
    config = plan.config
    return _ask(
        plan,
        query,
        "principles",
        principles_prompt(plan.templates, features, query.prompt),
        config.principle_max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        json_schema=principles_schema(features),
    )


def steering_prompts(
    plan: Plan, query: Query, features: list[Feature], principles: list[Principles]
) -> tuple[tuple[str, str], dict[str, list[int]]]:
    """Stage 3: the messages p+ and p-, and the token ids of x+ and x- through the model's chat template."""
    systems = (
        system_message(plan.templates, features, principles, "positive"),
        system_message(plan.templates, features, principles, "negative"),
    )
    messages = query.messages()
    prompts = {
        role: plan.chat.prompt_ids(plan.chat.with_system(system, messages))
        for role, system in zip(STEERED, systems, strict=True)
    }
    return systems, prompts


def answer_request(plan: Plan, query: Query, role: str, prompt_ids: list[int]) -> Request:
    """Stage 4's request for one role: y+ under x+, y- under x-, y° under x."""
    config = plan.config
    return Request(
        prompt_ids,
        derive_seed(config.seed, query.prompt_id, role),
        config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        # y° is sampled under x itself, so its sampled-token log-probs are π̃'s terms: no rescoring.
        logprobs=role == "original",
    )


def answer_room(plan: Plan) -> int:
    """The longest prompt that still leaves room for a whole answer."""
    return plan.config.max_model_len - plan.config.max_new_tokens


# --- one chunk ------------------------------------------------------------------------------------------
@dataclass(eq=False)  # compared and hashed by identity: a query's work is its key in the engine stream
class QueryWork:
    """Everything one query gathers on its way through the stages."""

    query: Query
    features: list[Feature]
    principles: list[Principles]
    systems: tuple[str, str]
    prompts: dict[str, list[int]]  # role -> token ids of x+, x- and x
    reason: str | None = None  # why the query was dropped
    answers: dict[str, Completion] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # the cleaned answers
    responses: dict[str, list[int]] = field(default_factory=dict)  # the token ids that were scored
    scores: dict[str, list[float]] = field(default_factory=dict)


def run_chunk(
    engine: Engine, plan: Plan, chunk: list[Query], trace: list[tuple[str, str, Request]] | None = None
) -> list[dict[str, Any]]:
    """The SSO stages for one chunk of queries; returns one row per query (kept or dropped), in chunk order.

    Stages 1-3 run as one engine call each (`prepare_chunk`); then one call samples every y+, y- and y° of
    the chunk, and one call scores every kept y+ and y- under x. Scoring each answer the moment it landed,
    while the others still decoded, measured no faster on CPU (`ssogen bench`) and made π̃ depend on timing;
    scored together afterwards, π̃ is reproducible and dropped queries are never scored.
    ``trace``, when given, receives the (prompt_id, role, request) of every y+ / y- / y° request (the
    benchmark replays them).
    """
    # Every chunk starts from an empty prefix cache: a cache hit changes the floating-point results (bf16 on
    # CPU), so a chunk's answers would otherwise depend on the chunks before it, and a resumed build would
    # not equal an uninterrupted one. Within the chunk the cache still serves the shared prompt prefixes.
    engine.reset_prefix_cache()
    prepared = prepare_chunk(engine, plan, chunk)
    works = [
        QueryWork(
            q,
            prepared.features[q.prompt_id],
            prepared.principles[q.prompt_id],
            prepared.systems[q.prompt_id],
            prepared.prompts[q.prompt_id],
            reason="prompt_too_long" if q.prompt_id in prepared.too_long else None,
        )
        for q in chunk
    ]
    by_id = {work.query.prompt_id: work for work in works}
    sampling = engine.stream(SAMPLE_CALL)
    for prompt_id, role, request in sampling_requests(plan, prepared):
        if trace is not None:
            trace.append((prompt_id, role, request))
        sampling.generate((by_id[prompt_id], role), request)
    for (work, role), answer in sampling:
        _answered(plan, work, role, answer)
    # 5. π̃ of every kept answer that its sampling did not score, by prefill under x.
    scoring = engine.stream(SCORE_CALL)
    for work in works:
        for role in ROLES:
            if not work.reason and role not in work.scores:
                scoring.score((work, role), work.prompts["original"], work.responses[role])
    for (work, role), scores in scoring:
        work.scores[role] = scores
    # 6. W, one row per query in chunk order.
    return [dropped_row(w.query, w.features, w.reason, plan) if w.reason else _record(plan, w) for w in works]


def _answered(plan: Plan, work: QueryWork, role: str, answer: Completion) -> None:
    """4. Clean an answer and note the tokens to score; filter the query once all three are in."""
    work.answers[role] = answer
    text = work.texts[role] = strip_label(answer.text)
    if text:
        # Score the very tokens the policy sampled; only a cleaned answer is tokenised again.
        unchanged = answer.text.strip() == text
        finished = answer.finish_reason == "stop"
        work.responses[role] = list(answer.token_ids) if unchanged else plan.chat.response_ids(text, finished)
        if unchanged and answer.token_logprobs is not None:
            work.scores[role] = answer.token_logprobs  # y°, sampled under x itself
    if len(work.answers) == len(ROLES):
        work.reason = drop_reason(*(work.texts[r] for r in ROLES))


def _record(plan: Plan, work: QueryWork) -> dict[str, Any]:
    pi = {role: mean_logprob(work.scores[role]) for role in ROLES}
    return {
        "prompt_id": work.query.prompt_id,
        "prompt": work.query.prompt,
        "context": [dict(m) for m in work.query.context],
        "features": [f.name for f in work.features],
        "principle_source": _principle_source(work.principles),
        "system_pos": work.systems[0],
        "system_neg": work.systems[1],
        **{role: work.texts[role] for role in ROLES},
        **{f"logp_{role}": pi[role] for role in ROLES},
        **{f"tokens_{role}": len(work.responses[role]) for role in ROLES},
        **{f"finish_{role}": work.answers[role].finish_reason for role in ROLES},
        **{f"degenerate_{role}": work.answers[role].finish_reason == "repetition" for role in ROLES},
        "steering_in_user": not plan.chat.supports_system,
        "truncated": any(work.answers[role].finish_reason == "length" for role in ROLES),
        "weight": weight(pi["chosen"], pi["rejected"], plan.config.alpha),
        "alpha": plan.config.alpha,
        "model": plan.model.name,
        "round": plan.config.round,
        "drop_reason": None,
    }


def _principle_source(principles: list[Principles]) -> str:
    sources = {p.source for p in principles}
    return sources.pop() if len(sources) == 1 else "mixed"


def dropped_row(query: Query, features: list[Feature], reason: str, plan: Plan) -> dict[str, Any]:
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


# --- stages 1-3, stage by stage ----------------------------------------------------------------------------
@dataclass
class ChunkWork:
    """A chunk after the stages that come before sampling, each run over the whole chunk at once."""

    queries: list[Query]
    features: dict[str, list[Feature]]
    principles: dict[str, list[Principles]]
    systems: dict[str, tuple[str, str]]  # prompt_id -> (p+, p-)
    prompts: dict[str, dict[str, list[int]]]  # prompt_id -> role -> token ids of x+, x- and x
    too_long: set[str]  # prompt_ids whose prompts leave no room for an answer


def prepare_chunk(engine: Engine | None, plan: Plan, chunk: list[Query]) -> ChunkWork:
    """Stages 1-3 with one engine call per stage (the reference's way).

    With no engine (``--dry-run``) every prompt is still rendered and tokenised, the selection answers are
    empty (so features are drawn at random) and principles come from the library.
    """
    asks = [(q, request) for q in chunk if (request := selection_request(plan, q)) is not None]
    answers: dict[str, str] = {}
    if engine is not None:
        done = engine.generate([request for _, request in asks], desc=SELECT_CALL)
        answers = {q.prompt_id: answer.text for (q, _), answer in zip(asks, done, strict=True)}
    features = {q.prompt_id: pick_features(plan, q, answers.get(q.prompt_id, "")) for q in chunk}

    principles = {q.prompt_id: library_principles(features[q.prompt_id]) for q in chunk}
    if plan.config.generate_principles and engine is not None:
        writes = [
            (q, request) for q in chunk if (request := principles_request(plan, q, features[q.prompt_id])) is not None
        ]
        written = engine.generate([request for _, request in writes], desc=PRINCIPLES_CALL)
        for (q, _), answer in zip(writes, written, strict=True):
            principles[q.prompt_id] = parse_principles(answer.text, features[q.prompt_id])

    systems: dict[str, tuple[str, str]] = {}
    prompts: dict[str, dict[str, list[int]]] = {}
    for q in chunk:
        pid = q.prompt_id
        systems[pid], prompts[pid] = steering_prompts(plan, q, features[pid], principles[pid])
        prompts[pid]["original"] = plan.chat.prompt_ids(q.messages())
    room = answer_room(plan)
    too_long = {pid for pid, by_role in prompts.items() if max(map(len, by_role.values())) > room}
    return ChunkWork(list(chunk), features, principles, systems, prompts, too_long)


def sampling_requests(plan: Plan, work: ChunkWork) -> list[tuple[str, str, Request]]:
    """Stage 4's requests of a prepared chunk: (prompt_id, role, request) for every query that fits."""
    return [
        (q.prompt_id, role, answer_request(plan, q, role, work.prompts[q.prompt_id][role]))
        for q in work.queries
        if q.prompt_id not in work.too_long
        for role in ROLES
    ]
