"""How a judge sees a pair, and how its verdict is read: the prompts and the arithmetic of `ssogen audit`.

Owns: the pairwise template (``prompts/audit_pairwise.j2``, rendered in the sandbox of `ssogen.inputs.library`) and
its checks (two labels, each one token after the answer prefix; the query and both answers shown), the
token ids of a judge prompt, the verdict read from the labels' log-probabilities, the two orders of a pair in
an order that does not depend on which answer is preferred, and the conversations a reward model scores.
Nothing here starts an engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ssogen.errors import UsageError
from ssogen.inputs.chat import ChatFormat, Message
from ssogen.inputs.library import Templates
from ssogen.output.audit_summary import sigmoid

JUDGE_TEMPLATE = "audit_pairwise.j2"
# Stand-ins rendered once to check that the template shows the query and both answers.
_PROBE = {"query": "SSOGEN-PROBE-QUERY", "answer_a": "SSOGEN-PROBE-ANSWER-A", "answer_b": "SSOGEN-PROBE-ANSWER-B"}


@dataclass(frozen=True)
class PairwiseTemplate:
    """The judge's template for one tokenizer: its labels, their token ids and the answer prefix."""

    templates: Templates
    chat: ChatFormat
    labels: tuple[str, str]
    label_ids: tuple[int, int]
    answer_prefix: str

    def prompt_ids(self, query: str, context: list[Message], answer_a: str, answer_b: str) -> list[int]:
        """Token ids of the judge's prompt: the rendered turn, the assistant's start and the answer prefix."""
        text = self.templates.render(JUDGE_TEMPLATE, query=query, context=context, answer_a=answer_a, answer_b=answer_b)
        return self.chat.prompt_ids([{"role": "user", "content": text}], self.answer_prefix)


def load_pairwise(templates: Templates, chat: ChatFormat) -> PairwiseTemplate:
    """Read the template's labels and prefix and check them against the judge's tokenizer (UsageError if wrong)."""
    where = f"--prompts: {templates.folder / JUDGE_TEMPLATE}"
    module = templates.render_module(JUDGE_TEMPLATE, context=[], **_PROBE)
    labels = tuple(str(getattr(module, name, "") or "") for name in ("label_a", "label_b"))
    missing = [name for name, label in zip(("label_a", "label_b"), labels, strict=True) if not label.strip()]
    if missing:
        raise UsageError(
            f"{where} sets no {' and no '.join(missing)}: the verdict is read from the judge's probability of "
            f'each label, so the template must set both, e.g. {{% set label_a = "A" %}} {{% set label_b = "B" %}}.'
        )
    if labels[0] == labels[1]:
        raise UsageError(f"{where}: label_a and label_b are both {labels[0]!r}; give two different labels.")
    text = str(module)
    unseen = [value for value in (*_PROBE.values(), *labels) if value not in text]
    if unseen:
        raise UsageError(
            f"{where} does not show {', '.join(repr(v) for v in unseen)} in the judge's prompt: it must show the "
            "query, both answers and both labels ({{ query }}, {{ answer_a }}, {{ answer_b }}, the labels)."
        )
    prefix = str(getattr(module, "answer_prefix", "") or "")
    base = chat.prompt_ids([{"role": "user", "content": text.strip()}], prefix)
    ids = []
    for label in labels:
        with_label = chat.prompt_ids([{"role": "user", "content": text.strip()}], prefix + label)
        if with_label[: len(base)] != base or len(with_label) != len(base) + 1:
            raise UsageError(
                f"{where}: the label {label!r} is not a single token of the judge's tokenizer after the answer "
                f"prefix {prefix!r}; choose labels and a prefix that tokenize apart (e.g. a prefix ending in '[[' "
                "and labels A / B)."
            )
        ids.append(with_label[-1])
    return PairwiseTemplate(templates, chat, (labels[0], labels[1]), (ids[0], ids[1]), prefix)


def both_orders(
    template: PairwiseTemplate, row: dict[str, Any], preferred: str, other: str
) -> tuple[list[list[int]], int]:
    """The two prompts of one pair in a canonical order, and the index of the one showing the preferred first.

    Sorted by their token ids, so the engine receives the same requests in the same order whichever answer
    is the preferred one: a folder with y+ and y- swapped is judged on the very same batches (bit-identical
    log-probabilities on CPU, where floats depend on the batch).
    """
    query, context = row["prompt"], [dict(m) for m in row["context"] or []]
    first = template.prompt_ids(query, context, row[preferred], row[other])
    second = template.prompt_ids(query, context, row[other], row[preferred])
    prompts = sorted([first, second])
    return prompts, prompts.index(first)


@dataclass(frozen=True)
class Verdict:
    """One pair judged in both orders."""

    p: float  # P(preferred ≻ other): the mean of the two orders
    p_preferred_first: float
    p_preferred_second: float
    margin: float  # mean log-odds for the preferred answer
    label_mass: float  # mean probability on the two labels

    @property
    def position_consistent(self) -> bool:
        return (self.p_preferred_first > 0.5) == (self.p_preferred_second > 0.5)


def verdict(first: tuple[float, float], second: tuple[float, float]) -> Verdict:
    """The verdict from the label log-probabilities (label A, label B) of the two orders.

    ``first``: the prompt showing the preferred answer as A; ``second``: showing it as B. Normalising over the
    two labels is a softmax over them, i.e. sigmoid of the log-probability difference.
    """
    odds_first = first[0] - first[1]
    odds_second = second[1] - second[0]
    p_first, p_second = sigmoid(odds_first), sigmoid(odds_second)
    mass = (math.exp(first[0]) + math.exp(first[1]) + math.exp(second[0]) + math.exp(second[1])) / 2
    return Verdict((p_first + p_second) / 2, p_first, p_second, (odds_first + odds_second) / 2, mass)


def reward_conversation(chat: ChatFormat, row: dict[str, Any], role: str) -> list[int]:
    """Token ids of the whole conversation (earlier turns, the query, one answer) as a reward model reads it."""
    messages = [*map(dict, row["context"] or []), {"role": "user", "content": row["prompt"]}]
    messages.append({"role": "assistant", "content": row[role]})
    text = chat.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    # The template text already holds any BOS token, so the tokenizer must not add another.
    return list(chat.tokenizer(text, add_special_tokens=False)["input_ids"])
