"""What the loop watch costs: the same answers read a piece per step (watched) and at once, side by side.

    .venv/bin/python -m tests.watch_cost

One engine, the bundled model in float32, 32 shared queries × 384 tokens (`ignore_eos`, seeded). The watch
is given a threshold no text reaches, so it reads and checks every answer but never aborts one: both runs
generate the same tokens. Runs alternate (plain, watched, plain, watched) and each side's best is kept.
Prints the watched run's speed over the plain one's, and the watch's host time per generated token, which
does not depend on the device: on a GPU, multiply it by the sequences per step and compare with a step.
"""

from __future__ import annotations

import json
import time

from ssogen.generation.engine import Engine, EngineSettings, LoopWatch, Request
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.models import bundled_model
from tests.shared import shared_data

QUERIES = 32
NEW_TOKENS = 384
ROUNDS = 2
NEVER = LoopWatch(threshold=1e-9)  # zlib never gets a text below this: every check runs, none aborts


def main() -> None:
    lines = (shared_data() / "user_oriented_instructions.jsonl").read_text().splitlines()[:QUERIES]
    settings = EngineSettings(model=bundled_model().path, dtype="float32", max_model_len=2048, enforce_eager=True)
    with Engine(settings) as engine:
        chat = ChatFormat(engine.llm.get_tokenizer())
        prompts = [chat.prompt_ids([{"role": "user", "content": json.loads(line)["instruction"]}]) for line in lines]

        def run(watch: LoopWatch | None) -> tuple[float, int]:
            requests = [
                Request(p, seed=i, max_tokens=NEW_TOKENS, top_p=0.8, ignore_eos=True, loop_watch=watch)
                for i, p in enumerate(prompts)
            ]
            engine.reset_prefix_cache()
            started = time.perf_counter()
            done = engine.generate(requests, desc="watch cost")
            return time.perf_counter() - started, sum(len(c.token_ids) for c in done)

        run(None)  # warm-up
        seconds: dict[str, list[float]] = {"plain": [], "watched": []}
        tokens = 0
        for _ in range(ROUNDS):
            for name, watch in (("plain", None), ("watched", NEVER)):
                elapsed, tokens = run(watch)
                seconds[name].append(elapsed)
        plain, watched = min(seconds["plain"]), min(seconds["watched"])
        print(json.dumps(seconds))
        print(
            f"watch_cost: watched_vs_plain_speed={plain / watched:.3f} "
            f"host_us_per_token={(watched - plain) / tokens * 1e6:.1f} tokens={tokens} "
            f"queries={QUERIES} new_tokens={NEW_TOKENS} rounds={ROUNDS}"
        )


if __name__ == "__main__":
    main()
