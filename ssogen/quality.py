"""Judging a finished answer: is it a degenerate loop?

Owns the check that backs up vLLM's own repetition detection (which the engine applies while decoding and
which only sees exact repeats at the very end of an answer). A loop that varies a little (a poem circling
on near-identical lines, a number that keeps growing digits) runs to the token limit, and still compresses
far better than prose: zlib finds the repeats wherever they are. Only answers cut by the token limit are
judged that way: an answer that ended by itself is not a runaway, and long structured answers (a table, a
JSON list of similar records) can compress almost as well as a loop.
"""

from __future__ import annotations

import zlib

# Below this many bytes a text is too short for its compression ratio to mean much (zlib's own header and
# a short answer's few repeats would decide it).
MIN_BYTES = 512


def compression_ratio(text: str) -> float:
    """zlib-compressed size over raw size (1.0 for an empty text): low means repetitive."""
    raw = text.encode("utf-8")
    if not raw:
        return 1.0
    return len(zlib.compress(raw, 9)) / len(raw)


def is_loop(text: str, threshold: float) -> bool:
    """Whether an answer of at least `MIN_BYTES` compresses below `threshold` (0 turns the check off)."""
    return threshold > 0 and len(text.encode("utf-8")) >= MIN_BYTES and compression_ratio(text) < threshold


def tail_is_loop(text: str, threshold: float, tail_bytes: int) -> bool:
    """Whether the last `tail_bytes` bytes of an answer being written compress below `threshold`: the answer
    has fallen into a loop, whatever it was before (0 turns the check off)."""
    tail = text.encode("utf-8")[-tail_bytes:]
    return threshold > 0 and len(tail) >= MIN_BYTES and len(zlib.compress(tail, 9)) / len(tail) < threshold


def is_degenerate(text: str, finish_reason: str, threshold: float) -> bool:
    """A loop: stopped by the engine's repetition check, or cut by the token limit and compressing below
    `threshold` (see the module's docstring)."""
    return finish_reason == "repetition" or (finish_reason == "length" and is_loop(text, threshold))
