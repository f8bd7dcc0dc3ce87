"""What ssogen keeps of the log-probabilities vLLM's engine core sends: one value per position, taken as it came.

π̃ needs one number per answer token: the sampled token's log-probability for y° (``logprobs=0``) and each answer
token's prompt log-probability for a scoring (``prompt_logprobs=0``). vLLM's front-end turns every such row into
Python objects as it arrives (per row: three ``tolist`` calls and a flat container's appends; per step of a request
read a piece at a time, a slice of that container), which was most of what ssogen's front-end did beyond a plain
generation loop (docs/performance.md, "Host cost"). `RowKeeper` stands in for vLLM's per-request log-prob processor
on those requests: it takes each row's own value out of the engine core's arrays as they come, hands vLLM nothing
to build, and ssogen reads them once, when the request is done.

The rows are the engine core's own, in the order it sent them, so whichever layout the model runner uses (V1's
N prompt rows with the cached ones unwritten, V2's N − c) reaches `ssogen.generation.engine.answer_logprobs` as it
would through vLLM's container. Where vLLM's request state is not laid out as this module expects (another
version), nothing is replaced and vLLM's own container is read, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class LogprobRows(Sequence[Any]):
    """The log-probability of one token per position, read like vLLM's list of per-position dicts.

    ``first`` positions come before the first row and hold nothing: 1 for prompt log-probabilities (the first
    prompt token has no context; vLLM's list starts with None), 0 for sampled ones.
    """

    def __init__(self, token_ids: list[int], logprobs: list[float], first: int = 0) -> None:
        if len(token_ids) != len(logprobs):
            raise ValueError(f"{len(token_ids)} tokens for {len(logprobs)} log-probabilities")
        self.token_ids, self.logprobs, self.first = token_ids, logprobs, first

    def __len__(self) -> int:
        return self.first + len(self.token_ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < self.first:
            return None
        from vllm.logprobs import Logprob

        row = index - self.first
        return {self.token_ids[row]: Logprob(logprob=self.logprobs[row], rank=None)}

    def values(self, positions: slice, tokens: Sequence[int]) -> list[float] | None:
        """The log-probabilities at ``positions`` when those positions hold exactly ``tokens``; else None."""
        start, stop, step = positions.indices(len(self))
        if step != 1 or start < self.first or stop - start != len(tokens):
            return None
        rows = slice(start - self.first, stop - self.first)
        if self.token_ids[rows] != list(tokens):
            return None
        return self.logprobs[rows]


class RowKeeper:
    """Stands in for vLLM's `LogprobsProcessor` on one request: keeps column 0 of each row, builds nothing else.

    vLLM's output processor calls `update_from_output` once per step that brought the request anything, and reads
    the attributes below when it makes a request's output: each is None, so vLLM passes no log-probabilities along
    and ssogen reads them here instead (`sampled`, `prompt`).

    Only column 0 is the request's own: the engine core computes a step's rows as wide as the widest request in the
    batch asks (a `logprob_token_ids` request beside y°), the request's own token first. It is taken out at once,
    into plain lists of numbers: holding the decoded arrays instead would keep objects the garbage collector tracks
    alive across steps, until they set off a full collection of the front-end's heap (0.35 s, measured).
    """

    logprobs = None
    prompt_logprobs = None
    prompt_token_id_logprobs = None
    cumulative_logprob = None

    def __init__(self) -> None:
        self._sampled: tuple[list[int], list[float]] = ([], [])
        self._prompt: tuple[list[int], list[float]] = ([], [])

    def update_from_output(self, output: Any) -> None:
        sampled = output.new_logprobs  # numpy arrays [tokens this step, width]
        if sampled is not None:
            ids, values = sampled[0], sampled[1]
            if len(ids) == 1:  # a step's one token, y°'s usual case: no slice objects
                self._sampled[0].append(ids.item(0))
                self._sampled[1].append(values.item(0))
            else:
                self._sampled[0].extend(ids[:, 0].tolist())
                self._sampled[1].extend(values[:, 0].tolist())
        prompt = output.new_prompt_logprobs_tensors  # torch tensors [rows of this prefill chunk, width]
        if prompt is not None:
            self._prompt[0].extend(prompt[0][:, 0].tolist())
            self._prompt[1].extend(prompt[1][:, 0].tolist())

    def pop_prompt_logprobs(self) -> None:
        return None

    def pop_prompt_token_id_logprobs(self) -> None:
        return None

    def sampled(self) -> LogprobRows:
        """Each sampled token's log-probability."""
        return LogprobRows(*self._sampled)

    def prompt(self) -> LogprobRows:
        """The prompt log-probabilities as vLLM's list holds them: nothing for the first position, then each row."""
        return LogprobRows(*self._prompt, first=1)


def keep_rows(llm_engine: Any, request_id: str) -> RowKeeper | None:
    """Put a `RowKeeper` in place of vLLM's log-prob processor for the request just added under ``request_id``;
    None (vLLM's own stays) where vLLM's output processor is not laid out as expected."""
    states = getattr(getattr(llm_engine, "output_processor", None), "request_states", None)
    state = states.get(request_id) if isinstance(states, dict) else None
    if state is None or not hasattr(state, "logprobs_processor"):
        return None
    keeper = RowKeeper()
    state.logprobs_processor = keeper
    return keeper
