"""The front-end's cheaper reads of vLLM's outputs give exactly what the plain reads gave.

ssogen asks vLLM for its log-probabilities in the flat container, spares it the text of each sampled
log-probability's token and of the answer itself (decoded once by ssogen: tests/test_detokenize.py), and does not
detokenise a request read only for fixed tokens' log-probabilities (`ssogen bench` measures what each saves); the
rows must not change.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def _both_layouts(tokens: list[int], values: list[float]):
    """The same sampled log-probabilities (``logprobs=0``: the sampled token alone at each position) in vLLM's
    flat container and in its list of per-position dicts, as its log-prob processor fills them."""
    from vllm.logprobs import append_logprobs_for_next_position, create_sample_logprobs

    layouts = []
    for flat in (True, False):
        container = create_sample_logprobs(flat)
        for token, value in zip(tokens, values, strict=True):
            append_logprobs_for_next_position(container, [token], [value], [None], rank=1, num_logprobs=0)
        layouts.append(container)
    return layouts


def test_sampled_logprobs_read_from_the_flat_container_equal_those_read_from_per_position_dicts():
    from ssogen.generation.engine import _sampled_logprobs

    tokens, values = [17, 4, 17, 2], [-0.25, -1.5, -0.125, -3.0]
    flat, dicts = _both_layouts(tokens, values)
    assert type(flat).__name__ == "FlatLogprobs" and isinstance(dicts, list)
    read = [_sampled_logprobs(SimpleNamespace(logprobs=layout, token_ids=tokens)) for layout in (flat, dicts)]
    assert read == [values, values]  # the very floats, in order, whichever layout
    # A piece of a longer answer, as a per-step output slices it, reads the same way.
    assert _sampled_logprobs(SimpleNamespace(logprobs=flat[2:], token_ids=tokens[2:])) == values[2:]


def test_a_flat_container_whose_tokens_are_not_the_answers_is_not_read_as_if_they_were():
    from ssogen.generation.engine import _sampled_logprobs

    flat, _ = _both_layouts([17, 4], [-0.25, -1.5])
    with pytest.raises(KeyError):  # the per-position lookup by token finds no entry for a token it lacks
        _sampled_logprobs(SimpleNamespace(logprobs=flat, token_ids=[17, 5]))


def test_sampled_logprobs_come_without_per_token_text_and_match_the_answers_prefill_scoring(engine, tokenizer):
    from ssogen.generation.engine import Request
    from ssogen.inputs.chat import ChatFormat

    prompt = ChatFormat(tokenizer).prompt_ids([{"role": "user", "content": "Name three rivers and a fact about each."}])
    stream = engine.stream("front-end test", progress=False)
    stream.generate("y", Request(prompt, seed=5, max_tokens=48, logprobs=True))
    # vLLM holds the request with no tokenizer for its log-probabilities and no detokenizer for the answer: ssogen
    # decodes the answer once it is read (tests/test_detokenize.py).
    processor = engine.llm.llm_engine.output_processor
    (request_id,) = stream.pending
    (state,) = [processor.request_states[i] for i in processor.external_req_ids[request_id]]
    assert state.logprobs_processor.tokenizer is None
    assert type(state.detokenizer).__name__ == "IncrementalDetokenizer"  # vLLM's no-op, ids only
    ((_, done),) = list(stream)
    assert done.text and len(done.token_logprobs) == len(done.token_ids) > 0
    # The same numbers as scoring the answer by prefill under the same prompt (π̃'s definition).
    (scored,) = engine.score([(prompt, done.token_ids)], read_cache=False)
    assert done.token_logprobs == pytest.approx(scored, abs=1e-3)


def test_a_request_read_for_fixed_tokens_logprobs_gives_them_without_detokenising(engine, tokenizer):
    from ssogen.generation.engine import Request
    from ssogen.inputs.chat import ChatFormat

    prompt = ChatFormat(tokenizer).prompt_ids([{"role": "user", "content": "Is the sky blue? Answer Yes or No."}])
    (greedy,) = engine.generate([Request(prompt, seed=0, max_tokens=1, temperature=0.0, logprobs=True)])
    chosen = greedy.token_ids[0]
    other = tokenizer.encode(" maybe", add_special_tokens=False)[0]
    (done,) = engine.generate([Request(prompt, 0, 1, temperature=0.0, logprob_token_ids=(chosen, other))])
    assert done.text == "" and set(done.label_logprobs) == {chosen, other}  # read, not detokenised
    # The greedy token's log-probability is the number its own sampling gave.
    assert done.label_logprobs[chosen] == pytest.approx(greedy.token_logprobs[0], abs=1e-4)
    assert done.label_logprobs[other] < done.label_logprobs[chosen] <= 0.0
