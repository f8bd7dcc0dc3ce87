"""The SSO steering stages, as pure functions over text (no engine, no I/O).

Owns: the feature-selection prompt and what is made of its answer (a calibrated ranking of the library's
features, or the reference's sampled list: recognise, shuffle, fill at random; bound features by chance),
query-specific principles (prompt, JSON schema, parsing with fallback to the library), the contrastive
system messages p+ / p-, removing an echoed steering label ("Engaging response:") and the filter that
drops a query whose three answers do not make a usable pair.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ssogen.errors import UsageError
from ssogen.inputs.library import Feature, Templates

ROLES = ("chosen", "rejected", "original")
STEERED = ("chosen", "rejected")  # the roles whose prompts carry a steering message
CHOSEN_SIDES = ("chosen", "original")  # y+ is chosen in the main pair, y° in the second steering pair
SIDES = {"chosen": "positive", "rejected": "negative"}


@dataclass(frozen=True)
class Principles:
    """The p+ / p- texts of one feature for one query, and where they came from."""

    positive: str
    negative: str
    source: str  # "library" or "generated"


def selectable(library: list[Feature]) -> list[Feature]:
    return [f for f in library if f.bound_probability == 0]


def selection_prompt(
    templates: Templates, library: list[Feature], query: str, k: int, mode: str = "ranked"
) -> tuple[str, str]:
    """The feature-selection user turn, and the start of the answer the policy continues from.

    The template sets ``answer_prefix`` (e.g. "Most relevant:", as in its examples): the policy then
    continues the examples' pattern instead of starting an answer of its own. ``mode`` lets the template
    ask for the k most relevant names (ranked) or for several (sampled, the reference's way).
    """
    module = templates.render_module("select_features.j2", features=selectable(library), k=k, query=query, mode=mode)
    return str(module).strip(), str(getattr(module, "answer_prefix", ""))


def name_token_ids(library: list[Feature], encode: Callable[[str], list[int]], answer_prefix: str) -> tuple[int, ...]:
    """The first token of each selectable feature's name as the answer would continue after the prefix.

    Ranking reads these tokens' log-probabilities at the answer's first position, so each feature needs a
    first token of its own; a library whose names share one is refused with the way out.
    """
    # The name follows the prefix after a space ("Most relevant: Safety"), unless the prefix ends in one.
    lead = "" if not answer_prefix or answer_prefix[-1].isspace() else " "
    firsts: dict[int, str] = {}
    for feature in selectable(library):
        ids = encode(lead + feature.name)
        if not ids:
            raise ValueError(f"feature name {feature.name!r} encodes to no tokens")
        other = firsts.setdefault(ids[0], feature.name)
        if other != feature.name:
            raise UsageError(
                f"--feature-selection ranked: the features {other} and {feature.name} start with the same token "
                f"for this model, so a ranking by first token cannot tell them apart; rename one of them in the "
                f"principle library, or use --feature-selection sampled."
            )
    return tuple(firsts)


def rank_features(
    library: list[Feature], scores: Sequence[float], calibration: Sequence[float] | None = None
) -> list[str]:
    """Selectable feature names, most relevant first: the policy's log-probability of each name, calibrated.

    Small models give most of their mass to the names of the first few-shot example whatever the query; the
    mean score of each name over a fixed set of reference queries measures that prior, and subtracting it
    leaves what the query itself adds ("contextual calibration"). Ties keep the library's order.
    """
    names = [f.name for f in selectable(library)]
    adjusted = [s - (calibration[i] if calibration is not None else 0.0) for i, s in enumerate(scores)]
    order = sorted(range(len(names)), key=lambda i: (-adjusted[i], i))
    return [names[i] for i in order]


def mean_scores(rows: Sequence[Sequence[float]]) -> list[float]:
    """The per-feature mean of the calibration queries' scores."""
    if not rows:
        return []
    return [math.fsum(row[i] for row in rows) / len(rows) for i in range(len(rows[0]))]


def parse_features(answer: str, library: list[Feature]) -> list[str]:
    """Selectable feature names the answer mentions, in order of first mention, each once."""
    found: list[tuple[int, str]] = []
    for feature in selectable(library):
        names = {feature.name, feature.good}
        positions = [
            m.start()
            for name in names
            for m in re.finditer(rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z])", answer, re.IGNORECASE)
        ]
        if positions:
            found.append((min(positions), feature.name))
    return [name for _, name in sorted(found)]


def choose_features(
    candidates: list[str], library: list[Feature], k: int, rng: random.Random, *, shuffle: bool = True
) -> list[Feature]:
    """Take k of the candidates (shuffled first, as the reference does with a sampled list; in the given order
    for a ranking), fill with random ones when there are fewer, then add bound features by chance."""
    by_name = {f.name: f for f in library}
    picked = list(dict.fromkeys(candidates))  # each once
    if shuffle:
        rng.shuffle(picked)
    picked = picked[:k]
    rest = [f.name for f in selectable(library) if f.name not in picked]
    if len(picked) < k:
        picked += rng.sample(rest, min(k - len(picked), len(rest)))
    chosen = [by_name[name] for name in picked]
    for feature in library:
        if feature.bound_probability > 0 and rng.random() < feature.bound_probability:
            chosen.append(feature)
    return chosen


def library_principles(features: list[Feature]) -> list[Principles]:
    return [Principles(f.positive, f.negative, "library") for f in features]


def principles_prompt(templates: Templates, feature: Feature, query: str) -> str:
    """The request for one feature's query-specific principles (one feature per answer, so that one answer
    cut by the token limit sends only its own feature back to the library)."""
    return templates.render("generate_principles.j2", feature=feature, query=query)


PRINCIPLES_SCHEMA: dict = {
    "type": "object",
    "properties": {"positive": {"type": "string"}, "negative": {"type": "string"}},
    "required": ["positive", "negative"],
}


def parse_principles(answer: str | None, feature: Feature) -> Principles:
    """Generated principles for one feature; the library text when the answer does not give both cleanly."""
    try:
        data = json.loads(answer) if answer else None
    except (json.JSONDecodeError, TypeError):
        data = None
    pos = data.get("positive") if isinstance(data, dict) else None
    neg = data.get("negative") if isinstance(data, dict) else None
    if isinstance(pos, str) and isinstance(neg, str) and pos.strip() and neg.strip():
        return Principles(pos.strip(), neg.strip(), "generated")
    return library_principles([feature])[0]


def system_message(templates: Templates, features: list[Feature], principles: list[Principles], side: str) -> str:
    """The p+ (side="positive") or p- (side="negative") steering message."""
    adjectives = [f.good if side == "positive" else f.bad for f in features]
    texts = [p.positive if side == "positive" else p.negative for p in principles]
    guidelines = [{"feature": f.name, "text": text} for f, text in zip(features, texts, strict=True)]
    return templates.render(
        "steering_system.j2", adjectives=adjectives, principles=texts, guidelines=guidelines, side=side
    )


def label_pattern(library: list[Feature]) -> re.Pattern[str]:
    """A steering label the policy may echo at the very start of an answer: "Engaging response:",
    "**Safe and Helpful Response:**", "Response:". Only the library's adjectives may precede the word, so an
    ordinary opening ("Answer: 42", "Final answer:", "Correct answer: (B)") is never taken for one."""
    adjectives = sorted({a for f in library for a in (f.good, f.bad)}, key=len, reverse=True)
    words = "|".join(re.escape(a) for a in adjectives)
    return re.compile(
        rf"^\s*(?:#+\s*)?[*_]{{0,2}}\s*(?:(?:{words})(?:,\s*|\s+and\s+|\s+))*(?:response|reply)\s*[*_]{{0,2}}\s*:"
        r"\s*[*_]{0,2}[ \t]*\n?",
        re.IGNORECASE,
    )


def strip_label(text: str, pattern: re.Pattern[str]) -> str:
    """Remove a leading steering label (see `label_pattern`) and the surrounding whitespace."""
    return pattern.sub("", text, count=1).strip()


def drop_reason(texts: Mapping[str, str], degenerate: Mapping[str, bool]) -> str | None:
    """Why a query's cleaned answers cannot make SSO pairs, or None to keep it.

    y+ is the chosen side of the main pair and y° of the second steering pair, so neither may be a loop; a
    looping y- is a real failure of the policy under p-, kept (and flagged) as the rejected side.
    """
    # A loop first: once one is seen, the query's other answers may be abandoned unfinished (even empty).
    for role in CHOSEN_SIDES:
        if degenerate[role]:
            return f"degenerate_{role}"
    for role in ROLES:
        if not texts[role].strip():
            return f"empty_{role}"
    if texts["chosen"] == texts["rejected"]:
        return "chosen_equals_rejected"
    if texts["rejected"] == texts["original"]:
        return "rejected_equals_original"
    if texts["chosen"] == texts["original"]:
        return "chosen_equals_original"
    return None
