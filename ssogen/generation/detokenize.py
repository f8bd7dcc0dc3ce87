"""An answer's text from its token ids, written once when ssogen reads it instead of by vLLM at every step.

Owns: decoding a generated answer the way vLLM's incremental detokeniser would have written it, in one or two
tokenizer calls per answer (and per check of a watched answer), and deciding per tokenizer whether it can.

Why: vLLM's front-end detokenises every sequence's new token in every engine step (``DecodeStream.step`` and
its stop checks, in ``OutputProcessor.process_outputs``). Timed during `ssogen bench` on a 2-core CPU beside the
engine, that was a third to a half of the front-end process's main thread; without an engine, vLLM's detokeniser
costs 5.4× the CPU of decoding once here (`tests/answer_text_cost.py`). On a GPU it is time the engine may wait.
ssogen asks vLLM for no text (``detokenize=False``) where it needs none while the answer is written (no stop
string), and decodes the finished answer's ids here.

What vLLM writes, and what this reproduces (``vllm/v1/engine/detokenizer.py``, ``FastIncrementalDetokenizer``):
- the stream is primed with the prompt, so an answer's first token is decoded after the prompt's text (a
  SentencePiece "▁" becomes the space it is after text); the prompt's last `CONTEXT` tokens stand in for it;
- special tokens are skipped, and the token that stopped the answer (end of sequence, a stop token: finish
  reason 'stop') is left out even where it is not special;
- text that ends in an incomplete character (U+FFFD) is held back until a later token completes it, so an
  answer cut there ends before it.
Only a Hugging Face fast tokenizer (one with a ``tokenizers`` backend, which vLLM decodes with too) is decoded
here, and only when a probe agrees: when the engine starts, vLLM's own detokeniser writes a few answers a token at
a time (`ssogen.generation.engine.vllm_writes`), and every cut of them must decode here to what vLLM had written by
then. For any other tokenizer vLLM writes the text, as before. `ssogen doctor` compares real answers too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

# Prompt tokens decoded before the answer, standing in for the whole prompt vLLM primes its stream with: enough
# to make a word-start marker a space and to begin on whole characters (the prompt ends with a chat template's
# own tokens).
CONTEXT = 4
# What a tokenizer decodes an incomplete character to (the replacement character).
_INCOMPLETE = "\ufffd"
# Answers the probe decodes at every cut: words after the prompt, a leading space, accents, CJK and emoji (several
# tokens per character in byte-level and byte-fallback vocabularies), punctuation, code and blank lines.
_PROBE_PROMPT = "Question: say something.\nAnswer:"
_PROBE_ANSWERS = (
    "Sure! Here are three rivers: the Nile, the Amazon and the Yangtze.",
    " A leading space, then «guillemets», émigré and naïve.",
    "中文的回答，带标点。",
    "Emoji 🙂🎉 and a flag 🇫🇷 at the end🙂",
    "def f(x):\n    return x  # done\n\n\tTab.",
)

# What vLLM's detokeniser writes for an answer after a prompt, a token per step: the text after each step. The
# last token, with ``stopped``, is the one that ended the answer.
VllmWrites = Callable[[Sequence[int], Sequence[int], bool], list[str]]


class AnswerText:
    """Decodes finished (or watched) answers for one tokenizer; `enabled` is False where vLLM must write them."""

    def __init__(self, tokenizer: Any, vllm_writes: VllmWrites) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._backend = backend if callable(getattr(backend, "decode", None)) else None
        if self._backend is not None and not self._probe(tokenizer, vllm_writes):
            log.info("this tokenizer's answers are decoded by vLLM as they are written (the probe differed)")
            self._backend = None

    @property
    def enabled(self) -> bool:
        return self._backend is not None

    def __call__(self, prompt_ids: Sequence[int], token_ids: Sequence[int], *, stopped: bool) -> str:
        """The text vLLM would have written for ``token_ids`` after ``prompt_ids``; ``stopped``: the answer ended
        with its stop token (finish reason 'stop')."""
        assert self._backend is not None
        ids = list(token_ids[:-1] if stopped else token_ids)
        context = list(prompt_ids[-CONTEXT:])
        head = self._decode(context)
        text = self._after(head, context, ids)
        # vLLM never writes the text of a last step that ended in an incomplete character: drop the tokens of
        # that step (one by one) until the text ends on a whole one.
        while text.endswith(_INCOMPLETE) and ids:
            ids.pop()
            text = self._after(head, context, ids)
        return text

    def _probe(self, tokenizer: Any, vllm_writes: VllmWrites) -> bool:
        """Whether every cut of the probe's answers decodes to what vLLM had written by then, and the answers ended
        by the end-of-sequence token to what vLLM wrote for them."""
        try:
            prompt = self._encode(tokenizer, _PROBE_PROMPT)
            eos = getattr(tokenizer, "eos_token_id", None)
            for answer in _PROBE_ANSWERS:
                ids = self._encode(tokenizer, answer)
                written = vllm_writes(prompt, ids, False)
                if any(self(prompt, ids[:n], stopped=False) != written[n - 1] for n in range(1, len(ids) + 1)):
                    return False
                ended = [*ids, eos] if eos is not None else None
                if ended and self(prompt, ended, stopped=True) != vllm_writes(prompt, ended, True)[-1]:
                    return False
        except Exception:  # vLLM's detokeniser is not where this vLLM version keeps it: vLLM writes the text
            log.debug("probing ssogen's decoding against vLLM's failed", exc_info=True)
            return False
        return True

    @staticmethod
    def _encode(tokenizer: Any, text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _after(self, head: str, context: list[int], ids: list[int]) -> str:
        whole = self._decode(context + ids)
        return whole[len(head) :] if whole.startswith(head) else self._decode(ids)

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=True)  # type: ignore[union-attr]
