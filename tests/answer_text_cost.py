"""What writing answers' text costs the front-end: vLLM's detokeniser a token per step, or ssogen's one decode.

    .venv/bin/python -m tests.answer_text_cost

Answers stand in from the shared sets' reference outputs (each set's records with an ``output`` field, tokenised
and cut to 256 tokens, ended by the end-of-sequence token when shorter), each after its instruction's chat prompt,
with the bundled model's tokenizer. One side runs what vLLM's output processor does per request with
``detokenize=True``: its incremental detokeniser, made when the request is added and updated with each new token (one
token per engine step), its text read after each (`ssogen.generation.engine.vllm_writes`). The other runs what ssogen
does instead: vLLM's no-op detokeniser per token and `AnswerText` once. Every text must be equal. Runs alternate,
each side's best is kept.
Prints CPU microseconds per answer token and their ratio. No engine runs: this is the front-end's CPU alone, which does
not depend on the device (beside a busy engine on the same cores each call costs several times more, on both sides).
"""

from __future__ import annotations

import functools
import json
import time

from ssogen.generation.detokenize import AnswerText
from ssogen.generation.engine import vllm_writes
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.models import bundled_model
from tests.shared import shared_data

MAX_TOKENS = 256
ROUNDS = 3


def answers(chat: ChatFormat) -> list[tuple[list[int], list[int], bool]]:
    """(prompt ids, answer ids, ended by the end-of-sequence token) from every shared set's reference outputs."""
    tokenizer, eos = chat.tokenizer, chat.tokenizer.eos_token_id
    found = []
    for path in sorted(shared_data().glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            for instance in record.get("instances", []):
                output, ask = instance.get("output"), record.get("instruction", "")
                if not output:
                    continue
                ask = f"{ask}\n\n{instance['input']}" if instance.get("input") else ask
                prompt = chat.prompt_ids([{"role": "user", "content": ask}])
                ids = list(tokenizer(output, add_special_tokens=False)["input_ids"])
                stopped = len(ids) < MAX_TOKENS
                found.append((prompt, [*ids, eos] if stopped else ids[:MAX_TOKENS], stopped))
    return found


def by_vllm(tokenizer, batch) -> tuple[float, list[str]]:
    """vLLM's own detokeniser, made as its output processor makes it and updated a token per step."""
    started = time.process_time()
    texts = [vllm_writes(tokenizer, prompt, ids, stopped)[-1] for prompt, ids, stopped in batch]
    return time.process_time() - started, texts


def by_ssogen(decode: AnswerText, batch) -> tuple[float, list[str]]:
    from vllm.v1.engine.detokenizer import IncrementalDetokenizer

    started, texts = time.process_time(), []
    for prompt, ids, stopped in batch:
        detokenizer = IncrementalDetokenizer()  # what vLLM makes for detokenize=False: keeps the ids
        for token in ids:
            detokenizer.update([token], False)
        texts.append(decode(prompt, ids, stopped=stopped))
    return time.process_time() - started, texts


def main() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model().path)
    chat = ChatFormat(tokenizer)
    batch = answers(chat)
    tokens = sum(len(ids) for _, ids, _ in batch)
    decode = AnswerText(tokenizer, functools.partial(vllm_writes, tokenizer))
    assert decode.enabled, "the probe disagreed with vLLM for the bundled tokenizer"
    vllm_side, ssogen_side = [], []
    for _ in range(ROUNDS):
        seconds, vllm_texts = by_vllm(tokenizer, batch)
        vllm_side.append(seconds)
        seconds, ssogen_texts = by_ssogen(decode, batch)
        ssogen_side.append(seconds)
        assert ssogen_texts == vllm_texts, "ssogen's text differs from vLLM's"
    per_token = [min(side) / tokens * 1e6 for side in (vllm_side, ssogen_side)]
    print(
        f"{len(batch)} answers, {tokens:,} tokens: vLLM's detokeniser {per_token[0]:.2f} µs/token, ssogen's one decode "
        f"{per_token[1]:.2f} µs/token ({per_token[0] / per_token[1]:.1f}× less CPU), texts equal"
    )


if __name__ == "__main__":
    main()
