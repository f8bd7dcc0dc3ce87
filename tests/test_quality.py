"""Judging a finished answer: loops are found by how well they compress, normal answers are left alone."""

from __future__ import annotations

import json
import random

import pytest

from ssogen.generation.quality import MIN_BYTES, compression_ratio, is_degenerate, is_loop, written_is_loop

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


FRUITS = [
    "apple",
    "banana",
    "cherry",
    "date",
    "elderberry",
    "fig",
    "grape",
    "honeydew",
    "kiwi",
    "lemon",
    "mango",
    "nectarine",
    "orange",
    "papaya",
]
NAMES = ["Alice Martin", "Bob Chen", "Carla Diaz", "Dev Patel", "Emma Rossi", "Farid Haddad", "Grace Kim", "Hugo Silva"]
STEPS = [
    "Preheat the oven to 200 C", "Wash and dry the potatoes", "Cut them into even wedges",
    "Toss with olive oil and salt", "Add rosemary and garlic", "Spread on a lined tray", "Roast for twenty minutes",
    "Turn every wedge over", "Roast another fifteen minutes", "Check they are golden", "Season with black pepper",
    "Grate some parmesan on top", "Rest for two minutes", "Serve with a yogurt dip",
]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "| Fruit | Price per kg | Season |\n|---|---|---|\n"
        + "\n".join(
            f"| {f} | {1.5 + i * 0.37:.2f} | {('spring', 'summer', 'autumn')[i % 3]} |" for i, f in enumerate(FRUITS)
        ),
        "\n".join(f"{i}. {step}." for i, step in enumerate(STEPS, 1)),
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n" * 3,
        json.dumps(
            [{"id": i, "name": n, "email": n.split()[0].lower() + "@example.com"} for i, n in enumerate(NAMES * 2)],
            indent=2,
        ),
    ],
    ids=["table", "numbered-list", "repeated-function", "json"],
)
def test_structured_answers_that_end_by_themselves_are_not_loops(text):
    assert not is_degenerate(text, "stop", 0.15), compression_ratio(text)
    # Nor does the watch over an answer being written cut them.
    assert not written_is_loop(text, 0.15, 1024), compression_ratio(text[-1024:])


def test_the_watch_sees_an_answer_fall_into_a_loop_by_its_tail_while_the_whole_still_reads_as_prose():
    rng = random.Random(0)
    words = PROSE.split()
    prose = " ".join(rng.choice(words) for _ in range(500))
    falling = prose + " I'm looking forward to your feedback on my presentation." * 25
    assert not is_loop(falling, 0.15)  # as a whole it still compresses like text
    assert written_is_loop(falling, 0.15, 1024)  # its last 1,024 bytes are the loop
    assert not written_is_loop(prose, 0.15, 1024)
    assert not written_is_loop("ha " * 170, 0.15, 1024)  # under MIN_BYTES: too short to judge
    assert not written_is_loop(falling, 0.0, 1024)  # the check turned off


def test_the_watch_sees_a_paragraph_said_over_and_over_by_the_whole_text_though_its_tail_reads_as_prose():
    rng = random.Random(1)
    words = PROSE.split()
    paragraph = " ".join(rng.choice(words) for _ in range(100))  # about 600 bytes: longer than half the tail
    circling = "\n\n".join(paragraph.replace(words[0], words[i], 1) for i in range(1, 9))  # a little different
    tail = circling.encode()[-1024:].decode()
    assert not is_loop(tail, 0.15), compression_ratio(tail)  # the tail holds under two turns of the loop
    assert written_is_loop(circling, 0.15, 1024), compression_ratio(circling)
    # The whole is judged only from twice the tail's length, where the tail alone could not see a long loop.
    assert not written_is_loop(circling[:1500], 0.15, 1024)
    long_prose = " ".join(rng.choice(words) for _ in range(900))
    assert len(long_prose.encode()) > 2048 and not written_is_loop(long_prose, 0.15, 1024)


def test_only_the_engine_stop_or_a_cut_answer_that_compresses_like_a_loop_is_degenerate():
    loop = "SELECT * FROM customer_order_total_order_" + "5" * 1500
    assert is_degenerate("short", "repetition", 0.15)  # the engine saw the loop
    assert is_degenerate(loop, "length", 0.15)  # cut by the limit, and compresses like a loop
    assert not is_degenerate(loop, "stop", 0.15)  # ended by itself: not a runaway
    words = PROSE.split()
    rng = random.Random(0)
    long_prose = " ".join(rng.choice(words) for _ in range(600))
    assert not is_degenerate(long_prose, "length", 0.15)  # long text cut by the limit is only truncated


def test_a_count_that_runs_away_is_a_loop_though_its_numbers_never_repeat():
    primes = "The primes are " + ", ".join(str(n) for n in range(1801, 2400, 6))
    assert compression_ratio(primes) > 0.3  # zlib alone reads the new digits as new text
    sums = ", ".join(f"{i} + 39 = 264" for i in range(120, 200))
    for runaway in (primes, sums):
        assert written_is_loop(runaway, 0.15, 1024) and is_degenerate(runaway, "length", 0.15)
