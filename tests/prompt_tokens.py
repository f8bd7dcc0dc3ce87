"""What tokenising prompts costs the front-end: whole, and in remembered pieces (`ssogen.inputs.pieces`).

    .venv/bin/python -m tests.prompt_tokens

For each shared query set and for the project's own queries, the stages' own calls make every prompt a build
tokenises per query (x+, x- and x with the library's principles, and the ranked selection prompt), with the bundled
model's tokenizer, once tokenising whole and once in pieces; the ids must be equal. The figures include rendering
the templates, which both sides pay. Runs alternate (whole, pieces, whole, pieces), each side's best is kept, and a
fresh `ChatFormat` starts each pieces run, so its first prompts pay for the pieces it has not met yet and for the
comparison with whole texts. Prints CPU milliseconds per query and their ratio. No engine runs: this is the
front-end's CPU alone, which does not depend on the device.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ssogen.config import BuildConfig
from ssogen.generation.plan import Plan, plan_build
from ssogen.generation.stages import Setup, selection_request, steering_prompts
from ssogen.generation.steer import choose_features, library_principles
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.seeds import query_rng
from tests.shared import REPO, shared_data

ROUNDS = 2


def prompts(plan: Plan, steered: list[tuple]) -> tuple[float, list[list[int]]]:
    """CPU ms per query of the stages' own calls (x+, x-, x and the ranked selection prompt), and their ids."""
    setup = Setup(replace(plan, config=replace(plan.config, feature_selection="ranked")), context_len=1 << 30)
    started = time.process_time()
    ids = []
    for query, features, principles in steered:
        ids += steering_prompts(plan, query, features, principles)[1].values()
        ids.append(selection_request(setup, query).prompt_ids)
    return (time.process_time() - started) / len(steered) * 1e3, ids


def main() -> None:
    sets = [*sorted(shared_data().glob("*.jsonl")), REPO / "tests" / "data" / "queries.jsonl"]
    for path in sets:
        plan = plan_build(BuildConfig(queries=str(path), output=Path("/nonexistent-output")))
        steered = []
        for query in plan.queries.queries:
            rng = query_rng(0, 0, query.prompt_id)
            features = choose_features([], plan.library, plan.config.num_features, rng)
            steered.append((query, features, library_principles(features)))
        whole_chat = ChatFormat(plan.chat.tokenizer)
        whole_chat.pieces.enabled = False
        whole, pieces = [], []
        for _ in range(ROUNDS):
            ms, whole_ids = prompts(replace(plan, chat=whole_chat), steered)
            whole.append(ms)
            chat = ChatFormat(plan.chat.tokenizer)  # a fresh cache: the first prompts pay for every piece
            ms, piece_ids = prompts(replace(plan, chat=chat), steered)
            pieces.append(ms)
            assert piece_ids == whole_ids and chat.pieces.enabled, f"{path.name}: pieces differ from whole texts"
        print(
            f"{path.name:34s} {len(steered):4d} queries, {len(whole_ids):5d} prompts: whole {min(whole):.2f} ms/query, "
            f"pieces {min(pieces):.2f} ms/query ({min(whole) / min(pieces):.1f}× less CPU), ids equal"
        )


if __name__ == "__main__":
    main()
