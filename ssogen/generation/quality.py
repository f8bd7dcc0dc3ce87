"""Judging an answer: is it a degenerate loop?

Owns the checks that back up vLLM's own repetition detection (which the engine applies while decoding and
which only sees exact repeats at the very end of an answer). A loop that varies a little (a poem circling
on near-identical lines, a count that keeps going) runs to the token limit, and still compresses far better
than prose: zlib finds the repeats wherever they are, once every digit is read as "0". Two checks use it:
`written_is_loop`, on an answer while it is written (the engine's loop watch), and `is_degenerate`, on a
finished answer. An answer that ended by itself is judged only by the watch, not as a whole once it is done:
it is not a runaway, and a long structured answer (a table, a JSON list of records) can compress almost as
well as a loop over its whole length.
"""

from __future__ import annotations

import zlib

# Below this many bytes a text is too short for its compression ratio to mean much (zlib's own header and
# a short answer's few repeats would decide it).
MIN_BYTES = 512


# Every digit is read as "0" by the loop checks: a runaway count ("165 + 39 = 264, 166 + 39 = 264, …",
# "131. The X Factor", "1801, 1807, 1813, …") repeats itself but for its numbers, which zlib cannot see past.
_DIGITS_AS_ZERO = str.maketrans("123456789", "000000000")


def _loop_ratio(text: str) -> float:
    return compression_ratio(text.translate(_DIGITS_AS_ZERO))


def compression_ratio(text: str) -> float:
    """zlib-compressed size over raw size (1.0 for an empty text): low means repetitive."""
    raw = text.encode("utf-8")
    if not raw:
        return 1.0
    return len(zlib.compress(raw, 9)) / len(raw)


def is_loop(text: str, threshold: float) -> bool:
    """Whether an answer of at least `MIN_BYTES` compresses below `threshold` (0 turns the check off)."""
    return threshold > 0 and len(text.encode("utf-8")) >= MIN_BYTES and _loop_ratio(text) < threshold


def written_is_loop(text: str, threshold: float, tail_bytes: int) -> bool:
    """Whether an answer being written has become a loop (0 turns the check off): its last `tail_bytes` bytes
    compress below `threshold` (it has fallen into a loop, whatever it was before), or, once it is twice that
    long, the whole text so far does (a loop whose period is too long for the tail to hold: a paragraph said
    over and over, a little differently each time)."""
    raw = text.encode("utf-8")
    if is_loop(raw[-tail_bytes:].decode("utf-8", errors="ignore"), threshold):
        return True
    return len(raw) >= 2 * tail_bytes and is_loop(text, threshold)


def is_degenerate(text: str, finish_reason: str, threshold: float) -> bool:
    """A loop: stopped by the engine's repetition check, or cut by the token limit and compressing below
    `threshold` (see the module's docstring)."""
    return finish_reason == "repetition" or (finish_reason == "length" and is_loop(text, threshold))
