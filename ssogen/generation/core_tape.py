"""What the engine core sent the front-end during a run, recorded, and fed back to the front-end alone.

`ssogen bench` measures the front-end's CPU per answer token (`bench.host_figures`). Measured live, it shares the
machine with the engine core: on a 2-core CPU its figure moved nearly 4x between runs of the same code, because the
engine core's busy cores slow every instruction of the front-end. A GPU host does not pay that. So the bench also
plays each run back with no engine working: the same front-end (ssogen's flow and stages, vLLM's `LLMEngine`,
its input and output processors, the msgpack decoding of every batch) is fed the batches the engine core sent,
in the order it read them, and its CPU time is the front-end's alone. Left out: the socket calls that send and
receive (a system call per request and per batch), and the threads that wake on a timer.

The tape sits on vLLM's multiprocess engine-core client (`SyncMPClient`), the layer between the front-end and
the engine core process; everything above it runs for real:
    add_request       recording: the request's id, in the order sent; playing: the request is encoded for the
                      wire as vLLM would (its cost counted) and its new id noted, but nothing is sent;
    outputs_queue     recording: every batch the front-end reads, encoded for the wire; playing: the next batch,
                      decoded by the client's own decoder, with each request's id turned into the id the
                      played-back run gave the same request;
    call_utility      recording: the method and its answer (pausing the scheduler, emptying the prefix cache);
                      playing: the recorded answer; abort_requests: nothing is sent.
The run played back must be the very run recorded: the flow decides only from what it reads, so it sends the
same requests in the same order. Anything else (a request with another prompt, limit or seed, another number of
requests sent before a batch, another utility call, a batch naming a request not sent) raises `TapeDiverged`; the
bench also checks that every answer came back the same. vLLM's in-process client (VLLM_ENABLE_V1_MULTIPROCESSING=0)
has no such layer: `can_tape` is False.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ssogen.errors import SsogenError
from ssogen.generation.engine import Engine


class TapeDiverged(SsogenError):
    """The run played back did not send what the recorded run sent."""


@dataclass
class CoreTape:
    """One run's traffic from the engine core, as the front-end read it."""

    sent: list[str] = field(default_factory=list)  # the engine core's id of each request, in the order sent
    asked: list[tuple[Any, ...]] = field(default_factory=list)  # what each asked for (`_asked`), in that order
    # Each batch read: how many requests had been sent before it was read, and its frames on the wire.
    batches: list[tuple[int, list[bytes]]] = field(default_factory=list)
    utility: list[tuple[str, Any]] = field(default_factory=list)  # (method, answer) of each utility call
    # CPU this process spent encoding batches while recording: not the front-end's work, so the bench takes it
    # off the recorded run's figure.
    encode_seconds: float = 0.0


def can_tape(engine: Engine) -> bool:
    """Whether this engine's client is the multiprocess one the tape sits on."""
    client = engine.llm.llm_engine.engine_core
    return all(hasattr(client, name) for name in ("outputs_queue", "call_utility", "encoder", "decoder"))


def _asked(request: Any) -> tuple[Any, ...]:
    """What a request asks the engine core for: its prompt's tokens, how many to write, its seed."""
    params = request.sampling_params
    return (tuple(request.prompt_token_ids or ()), getattr(params, "max_tokens", None), getattr(params, "seed", None))


@contextlib.contextmanager
def _patched(client: Any, **attributes: Any) -> Iterator[None]:
    """Set attributes on the client instance for the block (methods shadow the class's), then put back."""
    saved = {name: client.__dict__[name] for name in attributes if name in client.__dict__}
    for name, value in attributes.items():
        setattr(client, name, value)
    try:
        yield
    finally:
        for name in attributes:
            if name in saved:
                setattr(client, name, saved[name])
            else:
                delattr(client, name)


@contextlib.contextmanager
def recording(engine: Engine) -> Iterator[CoreTape]:
    """Record what the engine core sends while the block runs."""
    if not can_tape(engine):
        raise SsogenError("this vLLM engine client runs the engine core in-process: there is no traffic to record")
    client = engine.llm.llm_engine.engine_core
    tape = CoreTape()
    add_request, call_utility, queue = client.add_request, client.call_utility, client.outputs_queue
    from vllm.v1.serial_utils import MsgpackEncoder

    encoder = MsgpackEncoder()

    def sent(request: Any) -> None:
        tape.sent.append(request.request_id)
        tape.asked.append(_asked(request))
        add_request(request)

    def utility(method: str, *args: Any) -> Any:
        answer = call_utility(method, *args)
        tape.utility.append((method, answer))
        return answer

    class Recorder:
        def get(self, *args: Any, **kwargs: Any) -> Any:
            batch = queue.get(*args, **kwargs)
            if not isinstance(batch, Exception):
                started = time.thread_time()
                frames = [bytes(frame) for frame in encoder.encode(batch)]
                tape.batches.append((len(tape.sent), frames))
                tape.encode_seconds += time.thread_time() - started
            return batch

    with _patched(client, add_request=sent, call_utility=utility, outputs_queue=Recorder()):
        yield tape


@contextlib.contextmanager
def playing(engine: Engine, tape: CoreTape) -> Iterator[None]:
    """Feed the recorded batches to the front-end while the block runs; nothing reaches the engine core."""
    if not can_tape(engine):
        raise SsogenError("this vLLM engine client runs the engine core in-process: there is nothing to play to")
    client = engine.llm.llm_engine.engine_core
    encoder, decoder = client.encoder, client.decoder
    renamed: dict[str, str] = {}  # the recorded run's id of each request -> the id the played-back run gave it
    batches = iter(tape.batches)
    utility_answers = iter(tape.utility)

    def sent(request: Any) -> None:
        encoder.encode(request)  # what the front-end pays to put it on the wire
        index = len(renamed)
        if index >= len(tape.sent):
            raise TapeDiverged(f"the run played back sent more requests than the {len(tape.sent)} recorded")
        if _asked(request) != tape.asked[index]:
            raise TapeDiverged(f"request {index + 1} of the run played back differs from the recorded one")
        renamed[tape.sent[index]] = request.request_id

    def utility(method: str, *args: Any) -> Any:
        recorded_method, answer = next(utility_answers, (None, None))
        if recorded_method != method:
            raise TapeDiverged(
                f"the run played back called {method!r} where the recorded run called {recorded_method!r}"
            )
        return answer

    class Player:
        def get(self, *args: Any, **kwargs: Any) -> Any:
            recorded = next(batches, None)
            if recorded is None:
                raise TapeDiverged(f"the run played back read more than the {len(tape.batches)} batches recorded")
            sent_before, frames = recorded
            if sent_before != len(renamed):
                raise TapeDiverged(
                    f"the run played back had sent {len(renamed)} requests where the recorded run had sent "
                    f"{sent_before} before the same batch"
                )
            # Fresh writable buffers, as a socket's are: the decoded arrays may be written to, and the tape is reused.
            batch = decoder.decode([bytearray(frame) for frame in frames])
            for output in batch.outputs:
                try:
                    output.request_id = renamed[output.request_id]
                except KeyError:
                    raise TapeDiverged(f"a recorded batch names request {output.request_id}, never sent") from None
            return batch

    with _patched(
        client, add_request=sent, call_utility=utility, abort_requests=lambda _ids: None, outputs_queue=Player()
    ):
        yield
    if next(batches, None) is not None:
        raise TapeDiverged("the run played back stopped before reading every recorded batch")
