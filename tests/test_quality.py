"""Judging a finished answer: loops are found by how well they compress, normal answers are left alone."""

from __future__ import annotations

import json
import random

import pytest

from ssogen.quality import MIN_BYTES, compression_ratio, is_degenerate, is_loop, tail_is_loop

PROSE = (
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light into chemical energy. "
    "Inside the chloroplasts, chlorophyll absorbs mostly red and blue light. That energy splits water molecules, "
    "releasing oxygen as a by-product, and drives the production of ATP and NADPH. In the Calvin cycle, the plant "
    "then uses those two carriers to fix carbon dioxide from the air into three-carbon sugars, which it assembles "
    "into glucose, sucrose and starch. Nearly every food chain on Earth starts with this reaction, and the oxygen "
    "in the air we breathe comes from it."
)


def test_a_verbatim_loop_compresses_far_below_prose():
    loop = "SELECT * FROM customer_order_total_order_" + "5" * 1500
    assert compression_ratio(loop) < 0.05 < 0.4 < compression_ratio(PROSE)
    assert is_loop(loop, 0.15) and not is_loop(PROSE, 0.15)


def test_a_near_loop_that_varies_a_little_is_still_a_loop():
    lines = [f"A moment's breath, a moment's light, a moment {i % 3} in the night," for i in range(40)]
    assert is_loop("\n".join(lines), 0.15)


def test_short_answers_and_a_zero_threshold_are_never_judged():
    assert not is_loop("ha " * (MIN_BYTES // 3 - 1), 0.15)  # repetitive but too short to judge
    assert not is_loop("ha " * 1000, 0.0)  # the check turned off
    assert compression_ratio("") == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "\n".join(f"| {i} | item {i} | {i * 3.5:.2f} |" for i in range(30)),  # a table
        "\n".join(f"{i}. Step {i}: open the file, read line {i}, and print it." for i in range(1, 25)),  # a list
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n" * 3,
        json.dumps([{"id": i, "name": f"user{i}", "active": i % 2 == 0} for i in range(20)], indent=2),
    ],
    ids=["table", "numbered-list", "repeated-function", "json"],
)
def test_structured_answers_that_end_by_themselves_are_not_loops(text):
    assert not is_degenerate(text, "stop", 0.15), compression_ratio(text)
    # Nor does the watch over an answer being written cut them (a JSON list of near-identical records is the
    # closest: its last 1,024 bytes compress to 0.158).
    assert not tail_is_loop(text, 0.15, 1024), compression_ratio(text[-1024:])


def test_the_watch_sees_an_answer_fall_into_a_loop_by_its_tail_while_the_whole_still_reads_as_prose():
    rng = random.Random(0)
    words = PROSE.split()
    prose = " ".join(rng.choice(words) for _ in range(500))
    falling = prose + " I'm looking forward to your feedback on my presentation." * 25
    assert not is_loop(falling, 0.15)  # as a whole it still compresses like text
    assert tail_is_loop(falling, 0.15, 1024)  # its last 1,024 bytes are the loop
    assert not tail_is_loop(prose, 0.15, 1024)
    assert not tail_is_loop("ha " * 170, 0.15, 1024)  # under MIN_BYTES: too short to judge
    assert not tail_is_loop(falling, 0.0, 1024)  # the check turned off


def test_only_the_engine_stop_or_a_cut_answer_that_compresses_like_a_loop_is_degenerate():
    loop = "SELECT * FROM customer_order_total_order_" + "5" * 1500
    assert is_degenerate("short", "repetition", 0.15)  # the engine saw the loop
    assert is_degenerate(loop, "length", 0.15)  # cut by the limit, and compresses like a loop
    assert not is_degenerate(loop, "stop", 0.15)  # ended by itself: not a runaway
    words = PROSE.split()
    rng = random.Random(0)
    long_prose = " ".join(rng.choice(words) for _ in range(600))
    assert not is_degenerate(long_prose, "length", 0.15)  # long text cut by the limit is only truncated
