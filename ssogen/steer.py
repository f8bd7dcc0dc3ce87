"""The SSO steering stages, as pure functions over text (no engine, no I/O).

Owns: the feature-selection prompt and the parsing of its answer (recognise, shuffle, fill at random,
bound features), query-specific principles (prompt, JSON schema, parsing with fallback to the library),
the contrastive system messages p+ / p-, cleaning an answer (an echoed label such as "Engaging
response:") and the filter that drops a query whose three answers do not make a usable pair.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

from ssogen.library import Feature, Templates

ROLES = ("chosen", "rejected", "original")
SIDES = {"chosen": "positive", "rejected": "negative"}


@dataclass(frozen=True)
class Principles:
    """The p+ / p- texts of one feature for one query, and where they came from."""

    positive: str
    negative: str
    source: str  # "library" or "generated"


def derive_seed(run_seed: int, prompt_id: str, purpose: str) -> int:
    """A request seed that depends only on the run seed, the query and what the request is for."""
    digest = hashlib.sha256(f"{run_seed}:{prompt_id}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def query_rng(run_seed: int, prompt_id: str) -> random.Random:
    """Per-query random generator: a query's choices do not depend on the other queries."""
    return random.Random(derive_seed(run_seed, prompt_id, "features"))


def selectable(library: list[Feature]) -> list[Feature]:
    return [f for f in library if f.bound_probability == 0]


def selection_prompt(templates: Templates, library: list[Feature], query: str, k: int) -> tuple[str, str]:
    """The feature-selection user turn, and the start of the answer the policy continues from.

    The template sets ``answer_prefix`` (e.g. "Most relevant:", as in its examples): the policy then
    continues the examples' pattern instead of starting an answer of its own.
    """
    module = templates.render_module("select_features.j2", features=selectable(library), k=k, query=query)
    return str(module).strip(), str(getattr(module, "answer_prefix", ""))


def selection_pattern(library: list[Feature], k: int) -> str:
    """The regular expression a selection answer is held to: k selectable feature names, comma-separated.

    Structured output keeps the answer to names the parser recognises, and ends it after the k-th, so
    selection costs a few decoding steps instead of up to ``--selection-max-tokens`` of free text.
    """
    names = "|".join(re.escape(f.name) for f in selectable(library))
    return rf" ?({names})(, ({names})){{{k - 1}}}"


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


def choose_features(recognised: list[str], library: list[Feature], k: int, rng: random.Random) -> list[Feature]:
    """Shuffle the recognised features, take k, fill with random ones, then add bound features by chance."""
    by_name = {f.name: f for f in library}
    picked = list(recognised)
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


def principles_prompt(templates: Templates, features: list[Feature], query: str) -> str:
    return templates.render("generate_principles.j2", features=features, query=query)


def principles_schema(features: list[Feature]) -> dict:
    """JSON schema the structured-output decoder enforces on a generated-principles answer."""
    pair = {
        "type": "object",
        "properties": {"positive": {"type": "string"}, "negative": {"type": "string"}},
        "required": ["positive", "negative"],
    }
    return {
        "type": "object",
        "properties": {f.name: pair for f in features},
        "required": [f.name for f in features],
    }


def parse_principles(answer: str, features: list[Feature]) -> list[Principles]:
    """Generated principles per feature; the library text for any feature the answer does not give cleanly."""
    try:
        data = json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        data = None
    result = []
    for feature, fallback in zip(features, library_principles(features), strict=True):
        entry = data.get(feature.name) if isinstance(data, dict) else None
        pos = entry.get("positive") if isinstance(entry, dict) else None
        neg = entry.get("negative") if isinstance(entry, dict) else None
        if isinstance(pos, str) and isinstance(neg, str) and pos.strip() and neg.strip():
            result.append(Principles(pos.strip(), neg.strip(), "generated"))
        else:
            result.append(fallback)
    return result


def system_message(templates: Templates, features: list[Feature], principles: list[Principles], side: str) -> str:
    """The p+ (side="positive") or p- (side="negative") steering message."""
    adjectives = [f.good if side == "positive" else f.bad for f in features]
    texts = [p.positive if side == "positive" else p.negative for p in principles]
    return templates.render("steering_system.j2", adjectives=adjectives, principles=texts, side=side)


# "Engaging response:", "**Safe and helpful answer:**", "## Response:" ... at the very start of an answer.
_LABEL = re.compile(
    r"^\s*(?:#+\s*)?[*_]{0,2}\s*(?:[\w'-]+(?:,\s*|\s+and\s+|\s+)){0,6}?(?:response|answer|reply)\s*[*_]{0,2}\s*:"
    r"\s*[*_]{0,2}[ \t]*\n?",
    re.IGNORECASE,
)


def strip_label(text: str) -> str:
    """Remove a leading label the model echoes from its steering (e.g. "Engaging response:")."""
    return _LABEL.sub("", text, count=1).strip()


def drop_reason(chosen: str, rejected: str, original: str) -> str | None:
    """Why a query's cleaned answers cannot make SSO pairs, or None to keep it."""
    for role, text in zip(ROLES, (chosen, rejected, original), strict=True):
        if not text.strip():
            return f"empty_{role}"
    if chosen == rejected:
        return "chosen_equals_rejected"
    if rejected == original:
        return "rejected_equals_original"
    if chosen == original:
        return "chosen_equals_original"
    return None
