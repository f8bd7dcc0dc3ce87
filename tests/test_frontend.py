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
    read = [_sampled_logprobs(layout, tokens) for layout in (flat, dicts)]
    assert read == [values, values]  # the very floats, in order, whichever layout
    # A piece of a longer answer, as a per-step output slices it, reads the same way.
    assert _sampled_logprobs(flat[2:], tokens[2:]) == values[2:]


def test_a_flat_container_whose_tokens_are_not_the_answers_is_not_read_as_if_they_were():
    from ssogen.generation.engine import _sampled_logprobs

    flat, _ = _both_layouts([17, 4], [-0.25, -1.5])
    with pytest.raises(KeyError):  # the per-position lookup by token finds no entry for a token it lacks
        _sampled_logprobs(flat, [17, 5])


def _core_output(sampled=None, prompt=None) -> SimpleNamespace:
    """What the engine core sends for one request in one step, as far as log-probabilities go."""
    return SimpleNamespace(new_logprobs=sampled, new_prompt_logprobs_tensors=prompt, prompt_token_id_logprobs=None)


def _vllms_own_processor(*, sampled: bool):
    from vllm.logprobs import create_prompt_logprobs, create_sample_logprobs
    from vllm.v1.engine.logprobs import LogprobsProcessor

    return LogprobsProcessor(
        tokenizer=None,
        logprobs=create_sample_logprobs(True) if sampled else None,
        prompt_logprobs=None if sampled else create_prompt_logprobs(True),
        cumulative_logprob=0.0 if sampled else None,
        num_logprobs=0 if sampled else None,
        num_prompt_logprobs=None if sampled else 0,
    )


def test_sampled_rows_kept_as_they_came_read_the_same_floats_as_vllms_container_and_hand_vllm_none():
    import numpy as np
    from vllm.v1.outputs import LogprobsLists

    from ssogen.generation.engine import _sampled_logprobs
    from ssogen.generation.logprob_rows import RowKeeper

    tokens, values = [17, 4, 17, 2, 9], [-0.25, -1.5, -0.125, -3.0, -0.0625]
    # One token in a step, then two (as a speculative step may bring); each step's rows as wide as the widest
    # request in its batch asked (a request for 7 fixed tokens' log-probabilities beside it: 8 columns), the
    # request's own sampled token first.
    steps = [(0, 1, 8), (1, 3, 8), (3, 5, 1)]
    keeper, own = RowKeeper(), _vllms_own_processor(sampled=True)
    for start, end, width in steps:
        rows = LogprobsLists(
            np.array([[t, *range(900, 900 + width - 1)] for t in tokens[start:end]], dtype=np.int32),
            np.array([[v, *[-9.0] * (width - 1)] for v in values[start:end]], dtype=np.float32),
            np.ones(end - start, dtype=np.int32),
        )
        for processor in (keeper, own):
            processor.update_from_output(_core_output(sampled=rows))
    assert _sampled_logprobs(keeper.sampled(), tokens) == _sampled_logprobs(own.logprobs, tokens) == values
    # vLLM is handed no container to slice or copy into its outputs.
    assert keeper.logprobs is keeper.cumulative_logprob is keeper.pop_prompt_logprobs() is None
    # An answer trimmed after a stop string keeps its rows' prefix; rows for other tokens are not read as its own.
    assert _sampled_logprobs(keeper.sampled(), tokens[:3]) == values[:3]
    with pytest.raises(KeyError):
        _sampled_logprobs(keeper.sampled(), [17, 5])


@pytest.mark.parametrize("runner", ["V1", "V2"])
@pytest.mark.parametrize("chunks", [1, 3], ids=["one prefill", "chunked prefill"])
def test_prompt_rows_kept_as_they_came_give_the_pi_vllms_container_gives_in_both_layouts(runner, chunks):
    import numpy as np
    import torch
    from vllm.v1.outputs import LogprobsTensors

    from ssogen.generation.engine import answer_logprobs
    from ssogen.generation.logprob_rows import RowKeeper

    prompt, answer, cached = list(range(100, 140)), list(range(500, 512)), 16
    tokens = prompt + answer
    # Row r is the log-probability of position r + 1; V1 sends every row (the cached ones never written), V2 only
    # the rows after the hit.
    first = 1 if runner == "V1" else cached + 1
    ids = [7 if p <= cached else tokens[p] for p in range(first, len(tokens))]
    values = [123.0 if p <= cached else -0.05 * p for p in range(first, len(tokens))]
    keeper, own = RowKeeper(), _vllms_own_processor(sampled=False)
    for part in np.array_split(np.arange(len(ids)), chunks):
        rows = LogprobsTensors(
            torch.tensor([[ids[i]] for i in part]),
            torch.tensor([[values[i]] for i in part], dtype=torch.float32),
            torch.ones(len(part), dtype=torch.int64),
        )
        for processor in (keeper, own):
            processor.update_from_output(_core_output(prompt=rows))
    kept = keeper.prompt()
    assert len(kept) == len(own.prompt_logprobs) == len(tokens) - (first - 1)
    read = answer_logprobs(kept, len(prompt), answer, cached)
    assert read == answer_logprobs(own.prompt_logprobs, len(prompt), answer, cached)
    assert read == pytest.approx([-0.05 * (len(prompt) + i) for i in range(len(answer))])
    # Read like vLLM's list, entry by entry, too (what any other reader of prompt log-probabilities does).
    answer_entry = len(prompt) - (first - 1)
    ((token, entry),) = kept[answer_entry].items()
    ((vllms_token, vllms_entry),) = own.prompt_logprobs[answer_entry].items()
    assert kept[0] is None and token == vllms_token == answer[0] and entry.logprob == vllms_entry.logprob


def test_the_front_ends_heap_is_frozen_once_the_engine_is_up_so_a_full_collection_walks_none_of_it(engine):
    import gc

    # torch, transformers, vLLM and the tokenizer: hundreds of thousands of objects that live as long as the process.
    assert gc.get_freeze_count() > 100_000
    assert len(gc.get_objects(generation=2)) < gc.get_freeze_count() / 4


def test_sampled_logprobs_come_without_per_token_text_and_match_the_answers_prefill_scoring(engine, tokenizer):
    from ssogen.generation.engine import Request
    from ssogen.generation.logprob_rows import RowKeeper
    from ssogen.inputs.chat import ChatFormat

    prompt = ChatFormat(tokenizer).prompt_ids([{"role": "user", "content": "Name three rivers and a fact about each."}])
    stream = engine.stream("front-end test", progress=False)
    stream.generate("y", Request(prompt, seed=5, max_tokens=48, logprobs=True))
    # vLLM holds the request with ssogen's keeper of log-probability rows in place of its log-prob processor (no
    # container built, no token text), and no detokenizer for the answer: ssogen decodes the answer once it is read
    # (tests/test_detokenize.py).
    assert type(vllm_request_state(engine, stream).logprobs_processor) is RowKeeper
    assert type(vllm_request_state(engine, stream).detokenizer).__name__ == "IncrementalDetokenizer"  # a no-op
    ((_, done),) = list(stream)
    assert done.text and len(done.token_logprobs) == len(done.token_ids) > 0
    # The same numbers as scoring the answer by prefill under the same prompt (π̃'s definition), its rows kept too.
    scoring = engine.stream("front-end test", progress=False)
    scoring.score("y", prompt, done.token_ids, read_cache=False)
    assert type(vllm_request_state(engine, scoring).logprobs_processor) is RowKeeper
    ((_, scored),) = list(scoring)
    assert done.token_logprobs == pytest.approx(scored, abs=1e-3)


def vllm_request_state(engine, stream):
    """vLLM's front-end state of the one request in flight on ``stream``."""
    processor = engine.llm.llm_engine.output_processor
    (request_id,) = stream.pending
    (state,) = [processor.request_states[i] for i in processor.external_req_ids[request_id]]
    return state


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
