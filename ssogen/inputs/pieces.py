"""Tokenise chat prompts a piece at a time, each distinct piece once per build.

Owns: cutting a prompt's text into pieces whose token ids join into the whole text's ids, remembering each
piece's ids, and deciding per tokenizer (and re-checking on the build's first prompts) whether that holds.

Why: x+, x- and x carry the same user turn, system messages repeat across queries that share features, and
the feature-selection prompt repeats the library before each query. Tokenised whole, a query's prompts cost the
front-end about 2 ms of CPU (`tests/prompt_tokens.py`), what vLLM's own output processing spends on some 150
answer tokens; on a GPU that is time the engine may wait. Pieces come from two cuts:

- at the tokenizer's added tokens (``<|im_start|>``, ``<|im_end|>``, …). A Hugging Face fast tokenizer splits
  these off before normalising and pre-tokenising, so the text between two of them is tokenised on its own
  anyway: joining the pieces' ids gives the whole text's ids, unless the normaliser or pre-tokeniser depends
  on where a piece sits (a SentencePiece "▁" added to the first piece only). The probe below finds out.
- before the single space that opens a varying part (the query in the selection prompt, a principle in a steering
  message), when a non-space precedes it. Regex pre-tokenisers (GPT-2, Llama 3, Qwen) always split there, since no
  pattern runs from a non-space over a following space; a tokenizer without a pre-tokeniser gets no such cut, and
  the probe checks the cut on the others.

A tokenizer that fails the probe of pieces is tokenised whole, as before; one that fails only the probe of cuts
gets pieces without cuts. The first prompts of a build are also tokenised whole and compared; a difference switches
pieces off for the rest of the build, with a warning.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# The build's first prompts are also tokenised whole and compared: a cheap guard the probe could not give.
VERIFY_FIRST = 16
# Distinct pieces remembered (a user turn, a system message, the selection prompt's head); the oldest are
# forgotten first, so memory stays flat over thousands of queries.
CACHE_PIECES = 8192

_PROBE_TEXTS = (
    "Hello there.",
    " a leading space",
    "\nand a newline first\n\n",
    "42 is a number; 3.14 too",
    "«Guillemets», 中文, émigré and 🙂",
    "(a) parenthesised, 'quoted' and \"double\"",
    "trailing spaces   ",
    "Query: what is 2+2?",
    "tabs\tand\r\nwindows lines",
)
_PROBE_HEADS = ("Pick one:", "Query", "the end.", 'said "', "list)", "x\n")


class PieceTokenizer:
    """Token ids of chat prompts for one tokenizer, a remembered piece at a time when that is exact."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self._to_verify = VERIFY_FIRST
        self._piece_ids = functools.lru_cache(maxsize=CACHE_PIECES)(self._encode_piece)
        self._added: dict[str, int] = {}
        self._split: re.Pattern[str] | None = None
        self.enabled = self._usable() and self._probe_pieces()
        # A cut inside a piece is safe only where a pre-tokeniser splits the text before the model's merges run.
        self.cuts = self.enabled and self._backend.pre_tokenizer is not None and self._probe_cuts()

    def encode(self, text: str, vary: Sequence[str] = ()) -> list[int]:
        """The ids of ``text`` (no special tokens added); ``vary`` names parts that change from call to call."""
        if not self.enabled:
            return self.whole(text)
        ids = self._joined(text, vary if self.cuts else ())
        if ids is None:  # an added token found with whitespace it does not strip (never met yet): whole
            return self.whole(text)
        if self._to_verify > 0:
            self._to_verify -= 1
            whole = self.whole(text)
            if ids != whole:
                self.enabled = False
                log.warning(
                    "tokenising prompts in pieces gave other ids than tokenising them whole for this tokenizer; "
                    "every prompt is tokenised whole from here on"
                )
                return whole
        return ids

    # --- deciding ------------------------------------------------------------------------------------------
    def _usable(self) -> bool:
        """A fast tokenizer whose added tokens can be found in the raw text as the tokenizer finds them."""
        if self._backend is None or not getattr(self.tokenizer, "is_fast", False):
            return False
        normalizes = self._backend.normalizer is not None
        added = getattr(self.tokenizer, "added_tokens_decoder", {})
        patterns = []
        # Longest first, so that a token that begins another is not found inside it.
        for token_id, token in sorted(added.items(), key=lambda item: len(item[1].content), reverse=True):
            if token.single_word or (token.normalized and normalizes):
                return False
            self._added[token.content] = token_id
            # A token that strips the whitespace beside it takes that whitespace along, as the tokenizer's split does.
            before, after = (r"\s*" if token.lstrip else ""), (r"\s*" if token.rstrip else "")
            patterns.append(before + re.escape(token.content) + after)
        if patterns:
            self._split = re.compile("(" + "|".join(patterns) + ")")
        return True

    def _probe_pieces(self) -> bool:
        """Whether pieces between added tokens join into whole texts' ids, on texts built to catch tokenizers that
        mark a piece by where it sits."""
        specials = list(self._added)[:2] or [""]
        texts = [f"{a}{special}{b}" for a in _PROBE_TEXTS for b in _PROBE_TEXTS[:3] for special in specials]
        return all(self._joined(text, ()) == self.whole(text) for text in texts)

    def _probe_cuts(self) -> bool:
        """Whether cuts before the space that opens a varying part join into whole texts' ids."""
        tails = [tail.lstrip() for tail in _PROBE_TEXTS]
        texts = [f"{head} {tail}" for head in _PROBE_HEADS for tail in tails]
        return all(self._joined(text, tails) == self.whole(text) for text in texts)

    # --- tokenising ----------------------------------------------------------------------------------------
    def whole(self, text: str) -> list[int]:
        """The ids of ``text`` tokenised whole, as the tokenizer itself gives them."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        return tuple(self._backend.encode(piece, add_special_tokens=False).ids)

    def _joined(self, text: str, vary: Sequence[str]) -> list[int] | None:
        # Split on one capturing group: plain text at even places, an added token (with what it strips) at odd.
        parts = self._split.split(text) if self._split is not None else [text]
        ids: list[int] = []
        for index, part in enumerate(parts):
            if index % 2:
                token_id = self._added.get(part, self._added.get(part.strip()))
                if token_id is None:
                    return None
                ids.append(token_id)
            elif part:
                for piece in _cut_before(part, vary):
                    ids.extend(self._piece_ids(piece))
        return ids


def _cut_before(text: str, vary: Sequence[str]) -> list[str]:
    """``text`` cut before the space that opens the last occurrence of each varying part (after a non-space)."""
    cuts = set()
    for part in vary:
        at = text.rfind(part) if part and not part[0].isspace() else -1
        if at >= 2 and text[at - 1] == " " and not text[at - 2].isspace():
            cuts.add(at - 1)
    bounds = [0, *sorted(cuts), len(text)]
    return [text[start:end] for start, end in itertools.pairwise(bounds)]
