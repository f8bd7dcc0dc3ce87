"""The SSO stages of one query, as a generator the flow drives.

Owns: the request of every stage (feature selection, query-specific principles, y+ / y- / y°, the scoring
of y+ and y- under the bare query) and what is made of the answers (features, the messages p+ / p-, cleaned
answers, loops, the drop filter, π̃ and W), ending in one row per query: a kept record or a dropped row.

`query_stages` yields what a query needs from the engine next (named requests) and is sent the results
back; it never touches the engine. So the same code runs in the continuous flow, in held batches
(`--reproducible`), inside a Ray replica and in the dry run (which sends back nothing).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ssogen.generation.engine import Completion, LoopWatch, Repetition, Request
from ssogen.generation.plan import Plan
from ssogen.generation.quality import is_degenerate
from ssogen.generation.scoring import mean_logprob, weight
from ssogen.generation.steer import (
    CHOSEN_SIDES,
    PRINCIPLES_SCHEMA,
    ROLES,
    STEERED,
    Principles,
    choose_features,
    drop_reason,
    library_principles,
    parse_features,
    parse_principles,
    principles_prompt,
    rank_features,
    selection_prompt,
    strip_label,
    system_message,
)
from ssogen.inputs.library import Feature
from ssogen.inputs.seeds import derive_seed, query_rng
from ssogen.inputs.sources import Query

Row = dict[str, Any]


@dataclass(frozen=True)
class Scoring:
    """A request for the per-token log-probabilities of `response_ids` continuing `prompt_ids` (by prefill)."""

    prompt_ids: list[int]
    response_ids: list[int]


Ask = Request | Scoring
# A query's stages yield {name: what it needs}, and are sent {name: Completion | list of log-probs | None}.
Stages = Generator[dict[str, Ask], dict[str, Any], Row]


@dataclass(frozen=True)
class Setup:
    """What every query's stages share, fixed once the engine is up."""

    plan: Plan
    context_len: int  # prompt + answer per sequence, as the engine holds it
    name_ids: tuple[int, ...] = ()  # ranked selection: the first token of each selectable feature's name
    calibration: tuple[float, ...] | None = None  # ranked selection: each name's mean score on reference queries


def query_stages(setup: Setup, query: Query) -> Stages:
    """One query through every stage; returns its row."""
    plan, config = setup.plan, setup.plan.config
    features = yield from _select_features(setup, query)
    principles = yield from _write_principles(setup, query, features)
    systems, prompts = steering_prompts(plan, query, features, principles)
    if max(map(len, prompts.values())) + config.max_new_tokens > setup.context_len:
        return dropped_row(plan, query, features, "prompt_too_long")

    got = yield {role: answer_request(plan, query, role, prompts[role]) for role in ROLES}
    answers = {role: _clean(plan, role, got[role]) for role in ROLES}
    reason = drop_reason(
        {role: a.text for role, a in answers.items()}, {role: a.degenerate for role, a in answers.items()}
    )
    if reason:
        return dropped_row(plan, query, features, reason, answers)

    # y° was sampled under x itself: its sampled-token log-probabilities are π̃'s terms, no rescoring.
    scores = {role: a.logprobs for role, a in answers.items() if a.logprobs is not None}
    asks = {role: Scoring(prompts["original"], answers[role].token_ids) for role in ROLES if role not in scores}
    if asks:
        scores |= yield asks
    return _record(plan, query, features, principles, systems, answers, scores)


# --- 1. features ----------------------------------------------------------------------------------------
def _select_features(setup: Setup, query: Query) -> Generator[dict[str, Ask], dict[str, Any], list[Feature]]:
    plan, config = setup.plan, setup.plan.config
    rng = query_rng(config.seed, config.round, query.prompt_id)
    if config.feature_selection == "random":
        return choose_features([], plan.library, config.num_features, rng)
    text, prefix = selection_prompt(
        plan.templates, plan.library, query.prompt, config.num_features, config.feature_selection
    )
    ids = plan.chat.prompt_ids([{"role": "user", "content": text}], prefix, vary=(query.prompt,))
    seed = derive_seed(config.seed, config.round, query.prompt_id, "select")
    if config.feature_selection == "ranked":
        if len(ids) + 1 > setup.context_len:  # no room to read the answer: features at random
            return choose_features([], plan.library, config.num_features, rng)
        answer = (yield {"select": Request(ids, seed, 1, temperature=0.0, logprob_token_ids=setup.name_ids)})["select"]
        ranked: list[str] = []
        if answer is not None and answer.label_logprobs is not None:
            scores = [answer.label_logprobs[token] for token in setup.name_ids]
            ranked = rank_features(plan.library, scores, setup.calibration)
        return choose_features(ranked, plan.library, config.num_features, rng, shuffle=False)
    # "sampled", the reference's way: a list of several names, shuffled, cut to k, filled at random.
    if len(ids) + config.selection_max_tokens > setup.context_len:
        return choose_features([], plan.library, config.num_features, rng)
    request = Request(
        ids,
        seed,
        config.selection_max_tokens,
        temperature=config.selection_temperature,
        top_p=config.selection_top_p,
        stop=("###", "\n"),  # the answer is one line of names; anything after it is never read
    )
    answer = (yield {"select": request})["select"]
    names = parse_features(answer.text if answer is not None else "", plan.library)
    return choose_features(names, plan.library, config.num_features, rng)


def selection_request(setup: Setup, query: Query) -> Request | None:
    """The selection request a query makes first (None when it makes none): for tests and the benchmark."""
    stages = _select_features(setup, query)
    try:
        return next(stages)["select"]  # type: ignore[return-value]
    except StopIteration:
        return None
    finally:
        stages.close()


# --- 2. principles ----------------------------------------------------------------------------------------
def _write_principles(
    setup: Setup, query: Query, features: list[Feature]
) -> Generator[dict[str, Ask], dict[str, Any], list[Principles]]:
    """The library's principles, or with --generate-principles the policy's own for each chosen feature.

    Bound features (Concision) always keep the library's text, as the reference does; each other feature
    is its own request, so an answer cut by the token limit sends only that feature back to the library.
    """
    plan, config = setup.plan, setup.plan.config
    principles = library_principles(features)
    if not config.generate_principles:
        return principles
    asks: dict[str, Ask] = {}
    for index, feature in enumerate(features):
        if feature.bound_probability > 0:
            continue
        text = principles_prompt(plan.templates, feature, query.prompt)
        ids = plan.chat.prompt_ids([{"role": "user", "content": text}], vary=(query.prompt,))
        if len(ids) + config.principle_max_tokens <= setup.context_len:
            asks[f"principles:{index}"] = Request(
                ids,
                derive_seed(config.seed, config.round, query.prompt_id, f"principles:{feature.name}"),
                config.principle_max_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                json_schema=PRINCIPLES_SCHEMA,
            )
    if not asks:
        return principles
    got = yield asks
    for index, feature in enumerate(features):
        if (name := f"principles:{index}") in asks:
            answer = got.get(name)
            principles[index] = parse_principles(answer.text if answer is not None else None, feature)
    return principles


# --- 3. messages and prompts ------------------------------------------------------------------------------
def steering_prompts(
    plan: Plan, query: Query, features: list[Feature], principles: list[Principles]
) -> tuple[tuple[str, str], dict[str, list[int]]]:
    """The messages p+ and p-, and the token ids of x+, x- and x through the model's chat template.

    A query's own system turn stays in all three prompts, after the steering message in x+ and x-.
    """
    systems = (
        system_message(plan.templates, features, principles, "positive"),
        system_message(plan.templates, features, principles, "negative"),
    )
    messages = query.messages()
    # Each principle's text is the same wherever it steers: cut before it, it is tokenised once per build.
    texts = [text for p in principles for text in (p.positive, p.negative)]
    prompts = {
        role: plan.chat.prompt_ids(plan.chat.with_system(_joined(system, query.system), messages), vary=texts)
        for role, system in zip(STEERED, systems, strict=True)
    }
    prompts["original"] = plan.chat.prompt_ids(plan.chat.with_system(query.system or None, messages))
    return systems, prompts


def _joined(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


# --- 4. answers -------------------------------------------------------------------------------------------
def answer_request(plan: Plan, query: Query, role: str, prompt_ids: list[int]) -> Request:
    """The request for one answer: y+ under x+, y- under x-, y° under x."""
    config = plan.config
    repetition = None
    if config.repetition_max_pattern > 0:
        repetition = Repetition(
            config.repetition_min_pattern, config.repetition_max_pattern, config.repetition_min_count
        )
    return Request(
        prompt_ids,
        derive_seed(config.seed, config.round, query.prompt_id, role),
        config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        # y° is sampled under x itself, so its sampled-token log-probs are π̃'s terms: no rescoring.
        logprobs=role == "original",
        repetition=repetition,
        loop_watch=LoopWatch(config.loop_compression) if config.loop_compression > 0 else None,
    )


@dataclass(frozen=True)
class Answer:
    """One answer as it is kept: the cleaned text, the tokens that are scored, and what was seen of it."""

    text: str
    token_ids: list[int]
    finish_reason: str
    degenerate: bool
    logprobs: list[float] | None  # π̃'s terms when the sampled tokens were kept as they are (y°)


def _clean(plan: Plan, role: str, completion: Completion) -> Answer:
    """An answer with an echoed steering label removed (y+ and y- only), and whether it is a loop."""
    raw = completion.text
    text = strip_label(raw, plan.labels) if role in STEERED else raw.strip()
    unchanged = raw.strip() == text
    # Score the very tokens the policy sampled; only an answer that lost a label is tokenised again.
    token_ids = (
        list(completion.token_ids)
        if unchanged
        else plan.chat.response_ids(text, finished=completion.finish_reason == "stop")
    )
    degenerate = is_degenerate(text, completion.finish_reason, plan.config.loop_compression)
    logprobs = completion.token_logprobs if unchanged else None
    return Answer(text, token_ids, completion.finish_reason, degenerate, logprobs)


def settles_query(name: str, result: Any) -> bool:
    """Whether one answer already decides its query while the others are being written: a chosen side (y+
    or y°) stopped as a loop drops the query (`drop_reason`), so its other answers need not be finished."""
    return name in CHOSEN_SIDES and isinstance(result, Completion) and result.finish_reason == "repetition"


# --- 5. rows ----------------------------------------------------------------------------------------------
def _record(
    plan: Plan,
    query: Query,
    features: list[Feature],
    principles: list[Principles],
    systems: tuple[str, str],
    answers: dict[str, Answer],
    scores: dict[str, list[float]],
) -> Row:
    pi = {role: mean_logprob(scores[role]) for role in ROLES}
    sources = {p.source for p in principles}
    return {
        **_identity(plan, query, features),
        "principle_source": sources.pop() if len(sources) == 1 else "mixed",
        "system_pos": systems[0],
        "system_neg": systems[1],
        **{role: answers[role].text for role in ROLES},
        **{f"logp_{role}": pi[role] for role in ROLES},
        **{f"tokens_{role}": len(answers[role].token_ids) for role in ROLES},
        **{f"finish_{role}": answers[role].finish_reason for role in ROLES},
        **{f"degenerate_{role}": answers[role].degenerate for role in ROLES},
        "steering_in_user": not plan.chat.supports_system,
        "truncated": any(answers[role].finish_reason == "length" for role in ROLES),
        "weight": weight(pi["chosen"], pi["rejected"], plan.config.alpha),
        "drop_reason": None,
    }


def dropped_row(
    plan: Plan, query: Query, features: list[Feature], reason: str, answers: dict[str, Answer] | None = None
) -> Row:
    """A dropped query's row; with its answers when they were sampled (the reason can then be read)."""
    row = {**_identity(plan, query, features), "truncated": False, "drop_reason": reason}
    for role, answer in (answers or {}).items():
        row |= {
            role: answer.text,
            f"finish_{role}": answer.finish_reason,
            f"tokens_{role}": len(answer.token_ids),
            f"degenerate_{role}": answer.degenerate,
        }
    return row


def _identity(plan: Plan, query: Query, features: list[Feature]) -> Row:
    return {
        "prompt_id": query.prompt_id,
        "prompt": query.prompt,
        "system": query.system,
        "context": [dict(m) for m in query.context],
        "features": [f.name for f in features],
        "alpha": plan.config.alpha,
        "model": plan.model.name,
        "round": plan.config.round,
    }
