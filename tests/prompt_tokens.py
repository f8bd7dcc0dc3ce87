"""What tokenising prompts costs the front-end: whole, and in remembered pieces (`ssogen.inputs.pieces`).

    .venv/bin/python -m tests.prompt_tokens

For each shared query set and for the project's own queries, every prompt a build tokenises per query (x+, x-
and x with the library's principles, and the ranked selection prompt) is tokenised whole and in pieces, with the
bundled model's tokenizer; the ids must be equal. Runs alternate (whole, pieces, whole, pieces), each side's best
is kept, and a fresh `ChatFormat` starts each pieces run, so its first prompts pay for the pieces it has not met
yet and for the comparison with whole texts. Prints CPU milliseconds per query and their ratio. No engine runs:
this is the front-end's CPU alone, which does not depend on the device.
"""

from __future__ import annotations

import time
from pathlib import Path

from ssogen.config import BuildConfig
from ssogen.generation.plan import plan_build
from ssogen.generation.steer import choose_features, library_principles, selection_prompt, system_message
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.seeds import query_rng
from tests.shared import REPO, shared_data

ROUNDS = 2


def prompts_of(path: Path, output: Path) -> tuple[list[tuple[list[dict[str, str]], str, list[str]]], int, object]:
    """Every prompt's messages, answer prefix and varying parts, as a build's stages pass them."""
    plan = plan_build(BuildConfig(queries=str(path), output=output))
    calls = []
    for query in plan.queries.queries:
        features = choose_features([], plan.library, plan.config.num_features, query_rng(0, 0, query.prompt_id))
        principles = library_principles(features)
        texts = [text for p in principles for text in (p.positive, p.negative)]
        for side in ("positive", "negative"):
            system = system_message(plan.templates, features, principles, side)
            calls.append((plan.chat.with_system(system, query.messages()), "", texts))
        calls.append((plan.chat.with_system(None, query.messages()), "", []))
        text, prefix = selection_prompt(plan.templates, plan.library, query.prompt, plan.config.num_features)
        calls.append(([{"role": "user", "content": text}], prefix, [query.prompt]))
    return calls, len(plan.queries.queries), plan.chat.tokenizer


def cpu_ms_per_query(chat: ChatFormat, calls: list, queries: int) -> tuple[float, list[list[int]]]:
    started = time.process_time()
    ids = [chat.prompt_ids(messages, prefix, vary=vary) for messages, prefix, vary in calls]
    return (time.process_time() - started) / queries * 1e3, ids


def main() -> None:
    sets = [*sorted(shared_data().glob("*.jsonl")), REPO / "tests" / "data" / "queries.jsonl"]
    for path in sets:
        calls, queries, tokenizer = prompts_of(path, Path("/nonexistent-output"))
        whole_chat = ChatFormat(tokenizer)
        whole_chat.pieces.enabled = False
        whole, pieces = [], []
        for _ in range(ROUNDS):
            ms, whole_ids = cpu_ms_per_query(whole_chat, calls, queries)
            whole.append(ms)
            chat = ChatFormat(tokenizer)
            ms, piece_ids = cpu_ms_per_query(chat, calls, queries)
            pieces.append(ms)
            assert piece_ids == whole_ids and chat.pieces.enabled, f"{path.name}: pieces differ from whole texts"
        print(
            f"{path.name:34s} {queries:4d} queries, {len(calls):5d} prompts: whole {min(whole):.2f} ms/query, "
            f"pieces {min(pieces):.2f} ms/query ({min(whole) / min(pieces):.1f}× less CPU), ids equal"
        )


if __name__ == "__main__":
    main()
