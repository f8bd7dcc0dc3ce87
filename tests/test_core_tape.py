"""A run recorded on the real engine and played back to the front-end alone (`ssogen.generation.core_tape`): the
same answers, nothing sent to the engine core, and any other run refused."""

from __future__ import annotations

import pytest

from ssogen.generation.core_tape import TapeDiverged, can_tape, playing, recording


def _run(engine, tokenizer, *, first_ask: str = "Say hi.", verdict: bool = True):
    """Generations of every kind the build sends (sampled with log-probabilities, watched for loops, a stop string,
    one fixed-token verdict), then a scoring of the first answer read from the prefix cache."""
    from ssogen.generation.engine import LoopWatch, Request
    from ssogen.inputs.chat import ChatFormat

    chat = ChatFormat(tokenizer)
    asks = [first_ask, "Name three colours.", "Write one sentence about rain.", "Is water wet? Answer yes or no."]
    prompts = [chat.prompt_ids([{"role": "user", "content": ask}]) for ask in asks]
    yes, no = (tokenizer.encode(word, add_special_tokens=False)[0] for word in (" yes", " no"))
    requests = [
        Request(prompts[0], 1, 24, logprobs=True),
        Request(prompts[1], 2, 24, loop_watch=LoopWatch(threshold=0.0, start=4, every=4)),
        Request(prompts[2], 3, 24, stop=("rain",)),
        Request(prompts[3], 4, 1, logprob_token_ids=(yes, no)),
    ][: 4 if verdict else 3]
    completions = engine.generate(requests, desc="taped")
    scores = engine.score([(prompts[0], completions[0].token_ids)], desc="taped score")
    return completions, scores


def test_a_run_played_back_to_the_front_end_alone_gives_the_same_answers_and_sends_nothing(engine, tokenizer):
    assert can_tape(engine)
    engine.reset_prefix_cache(required=True)
    with recording(engine) as tape:
        completions, scores = _run(engine, tokenizer)
    # Every request the front-end sent, the batches it read (one per step: at least one per token of the longest
    # answer), and each hold's pause and resume were recorded.
    assert len(tape.sent) == len(tape.asked) == 5
    assert len(tape.batches) >= max(len(c.token_ids) for c in completions) > 1
    assert [method for method, _ in tape.utility] == ["pause_scheduler", "resume_scheduler"] * 2
    assert completions[0].token_logprobs and completions[3].label_logprobs
    assert len(scores[0]) == len(completions[0].token_ids)
    client = engine.llm.llm_engine.engine_core
    sent_to_core: list[object] = []
    send = client._send_input
    client._send_input = lambda *args: sent_to_core.append(args)
    try:
        with playing(engine, tape):
            played = _run(engine, tokenizer)
    finally:
        del client._send_input
    assert played == (completions, scores)
    assert sent_to_core == []  # nothing reached the engine core
    assert client._send_input == send  # and the client is the engine's again
    assert engine.unfinished_requests == 0


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"first_ask": "Say hello."}, "request 1 of the run played back differs from the recorded one"),
        ({"verdict": False}, "had sent 3 requests where the recorded run had sent 4"),
    ],
    ids=["another prompt", "a request fewer"],
)
def test_a_run_that_sends_other_requests_than_the_recorded_one_is_refused(engine, tokenizer, change, says):
    with recording(engine) as tape:
        _run(engine, tokenizer)
    with pytest.raises(TapeDiverged, match=says), playing(engine, tape):
        _run(engine, tokenizer, **change)
    engine.abort_all()  # the refused run's requests, left in the front-end
    assert engine.unfinished_requests == 0
    # The client is the engine's own again: a real run still works.
    from ssogen.generation.engine import Request

    assert engine.generate([Request(tokenizer.encode("Hello there"), 9, 3)])[0].token_ids
