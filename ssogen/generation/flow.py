"""Keep the engine full: every query's stages in flight on one engine, from the first query to the last.

Owns the drivers of `ssogen.generation.stages.query_stages`:
    `Flow`           one engine and the queries on it: each query's next request is handed to the engine the
                     moment its previous stage is done; finished rows come back as they finish.
    `flow_chunks`    a whole build's queries through one `Flow`, admitted while the queries in flight stay
                     below what fills the engine (about two steps' worth of sequences), the finished rows
                     grouped into chunks for saving; no barrier between chunks. With ``reproducible`` each
                     chunk instead runs in held batches: every stage of the chunk released to the engine
                     together, the prefix cache emptied between chunks, so reruns give the same rows.
    `FlowService`    one continuous `Flow` fed by several callers at once (the Ray replicas' batches).
Also the per-engine set-up the stages share (the ranked selection's calibration), and the dry run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ssogen.errors import UsageError, WriteError
from ssogen.files import atomic_write_bytes
from ssogen.generation.engine import Completion, Engine, Request
from ssogen.generation.plan import Plan
from ssogen.generation.stages import ROLES, Ask, Row, Scoring, Setup, Stages, query_stages, settles_query
from ssogen.generation.steer import mean_scores, name_token_ids, selection_prompt
from ssogen.inputs.models import cache_dir
from ssogen.inputs.sources import Query

logger = logging.getLogger(__name__)

STREAM = "ssogen"  # names the engine requests
# Sequences kept in flight per engine slot: one step's worth waiting behind the running ones, so a slot
# freed by a finished answer is refilled in the very next step.
SLOT_MARGIN = 2.0
# y+, y- and y° of a query are in flight together: the most sequences one query holds at once.
SEQUENCES_PER_QUERY = len(ROLES)

# (prompt_id, role, request, completion) of every y+ / y- / y° answer: the benchmark replays them.
Trace = Callable[[str, str, Request, Completion], None]


def prepare(engine: Engine | None, plan: Plan) -> Setup:
    """What the stages share on this engine: its context, and the ranked selection's calibration.

    The calibration is each feature name's mean log-probability over the reference queries of the
    selection template (`Templates.calibration_queries`), read in one held engine call, once per engine.
    With no engine (the dry run) there is none, and the features are drawn at random.
    """
    if engine is None:
        return Setup(plan, plan.context_len)
    setup = Setup(plan, engine.max_model_len)
    if plan.config.feature_selection != "ranked":
        return setup
    _, prefix = selection_prompt(plan.templates, plan.library, "", plan.config.num_features)
    encode = lambda text: list(plan.chat.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    names = name_token_ids(plan.library, encode, prefix)
    requests = []
    for text in plan.templates.calibration_queries():
        prompt, prefix = selection_prompt(plan.templates, plan.library, text, plan.config.num_features)
        ids = plan.chat.prompt_ids([{"role": "user", "content": prompt}], prefix)
        if len(ids) < setup.context_len:
            requests.append(Request(ids, 0, 1, temperature=0.0, logprob_token_ids=names))
    cache = calibration_cache_path(engine, requests, names)
    calibration = _read_calibration(cache, len(names))
    if calibration is None:
        # The same floats on every run (bf16 on CPU depends on cache hits); --reproducible insists on it.
        engine.reset_prefix_cache(required=plan.config.reproducible)
        # The first prompt alone fills the cache with the few-shot prefix they all share; sent together, every
        # one of them would compute it again (a cached block only serves requests scheduled after it).
        done = engine.generate(requests[:1], desc="calibrate selection")
        done += engine.generate(requests[1:], desc="calibrate selection")
        calibration = mean_scores([[c.label_logprobs[t] for t in names] for c in done if c.label_logprobs])
        _write_calibration(cache, calibration)
    return Setup(plan, setup.context_len, names, tuple(calibration))


def calibration_cache_path(engine: Engine, requests: list[Request], names: tuple[int, ...]) -> Path:
    """Where this engine's calibration is kept: keyed by everything its floats depend on.

    The requests' token ids cover the template, the library, the reference queries and the tokenizer; the
    engine settings and vLLM's version cover the floats. So an equal key means the same call, made once per
    model rather than once per build (it costs a 2-core CPU about 35 s at every engine start).
    """
    import vllm

    settings = {k: v for k, v in asdict(engine.settings).items() if k != "log_file"}
    key = json.dumps(
        [vllm.__version__, settings, list(names), [r.prompt_ids for r in requests]], sort_keys=True, default=str
    )
    return cache_dir() / "calibration" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _read_calibration(path: Path, size: int) -> list[float] | None:
    try:
        values = json.loads(path.read_text())["calibration"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not there yet, or unreadable: score it again
    if not isinstance(values, list) or len(values) != size or not all(isinstance(v, float) for v in values):
        return None
    logger.info("feature selection: calibration read from %s", path)
    return values


def _write_calibration(path: Path, values: list[float]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps({"calibration": values}).encode())
    except (OSError, WriteError) as exc:  # a cache: the build goes on without it
        logger.warning("feature selection: could not keep the calibration in %s (%s)", path, exc)


def admission_window(engine: Engine) -> int:
    """Queries to keep in flight so that the engine's slots stay full (`SLOT_MARGIN` steps' worth)."""
    return max(1, math.ceil(SLOT_MARGIN * engine.max_num_seqs / SEQUENCES_PER_QUERY))


@dataclass
class _Live:
    """A query in flight: its stages, the order it was admitted in, and the answers of its current stage."""

    order: int
    query: Query
    stages: Stages
    asked: dict[str, Ask] = field(default_factory=dict)
    got: dict[str, Any] = field(default_factory=dict)


class Flow:
    """Queries on one engine, each advancing through its stages as its own results come back.

    A result that already decides its query (`ssogen.generation.stages.settles_query`: a looping y+ or y°) has the rest
    of that stage abandoned at once (`EngineStream.abandon`), so a lost query stops costing engine steps.

    A query added to an idle engine leads: the queries added with it wait one step before their requests go
    in. The engine reuses a cached prompt block only for requests scheduled after the one that computed it,
    so a burst of selection prompts sent together would each compute the few-shot prefix they share; sent
    after the leader's, they read it from the cache. This costs one step with one sequence.

    ``held``: a query's next requests wait until every request in flight has finished, then all go to the
    engine together with the scheduler held (the stages of a chunk run in lockstep, as fixed batches).
    """

    def __init__(self, engine: Engine, setup: Setup, *, held: bool = False, trace: Trace | None = None) -> None:
        self.setup = setup
        self.held = held
        self.trace = trace
        self.stream = engine.stream(STREAM, progress=False)
        self.live: dict[int, _Live] = {}
        self._order = itertools.count()
        self._finished: list[Row] = []
        self._parked: list[tuple[tuple[int, str], Ask]] = []
        self._leading = False  # a leader's first requests are in the engine; the others' wait for its step

    @property
    def in_flight(self) -> int:
        """Queries admitted and not yet finished."""
        return len(self.live)

    def add(self, query: Query) -> None:
        live = _Live(next(self._order), query, query_stages(self.setup, query))
        self.live[live.order] = live
        idle = not (self.held or self.stream.pending or self._parked)
        self._advance(live, None)
        if idle:
            self._leading = bool(self.stream.pending)

    def step(self) -> list[Row]:
        """One engine step (when anything is in flight); the rows of the queries that finished."""
        if self.held and self._parked and not self.stream.pending:
            self._release_parked()
        if self.stream.pending:
            for (order, name), result in self.stream.step():
                live = self.live[order]
                self._got(live, name, result)
                if settles_query(name, result):  # the query is dropped: its other answers are not needed
                    # In the order asked (a set's order would change with each process's string hashing).
                    for other in [name for name in live.asked if name not in live.got]:
                        # None: it finished in this same step, and its own result comes later in this loop
                        if (abandoned := self.stream.abandon((order, other))) is not None:
                            self._got(live, other, abandoned)
                if len(live.got) == len(live.asked):
                    self._advance(live, live.got)
        if self._leading:  # the leader's prompts are cached now: the rest may read them
            self._leading = False
            self._release_parked()
        rows, self._finished = self._finished, []
        return rows

    def _release_parked(self) -> None:
        """Send every parked request, held so that they all start in the next step (in query order)."""
        self.stream.hold()  # else the engine starts a step with whichever have arrived and splits them
        for key, ask in sorted(self._parked, key=lambda item: item[0]):
            self._send(key, ask)
        self._parked.clear()

    def close(self) -> None:
        self.stream.close()
        for live in self.live.values():
            live.stages.close()

    def _got(self, live: _Live, name: str, result: Any) -> None:
        live.got[name] = result
        if self.trace is not None and name in ROLES and isinstance(result, Completion):
            request = live.asked[name]
            assert isinstance(request, Request)
            self.trace(live.query.prompt_id, name, request, result)

    def _advance(self, live: _Live, got: dict[str, Any] | None) -> None:
        try:
            asked = live.stages.send(got)
        except StopIteration as finished:
            del self.live[live.order]
            self._finished.append(finished.value)
            return
        live.asked, live.got = asked, {}
        for name, ask in asked.items():
            if self.held or self._leading:
                self._parked.append(((live.order, name), ask))
            else:
                self._send((live.order, name), ask)

    def _send(self, key: tuple[int, str], ask: Ask) -> None:
        if isinstance(ask, Scoring):
            self.stream.score(key, ask.prompt_ids, ask.response_ids)
        else:
            self.stream.generate(key, ask)


def flow_chunks(
    engine: Engine,
    setup: Setup,
    queries: Iterable[Query],
    *,
    chunk_size: int,
    reproducible: bool = False,
    trace: Trace | None = None,
) -> Iterator[list[Row]]:
    """Every query's row, in chunks of `chunk_size` (the last may be smaller), as they finish.

    Continuous (the default): one `Flow` for the whole run, admitting the next query whenever fewer than
    `admission_window` are in flight; a chunk is the next `chunk_size` queries to finish. Memory holds the
    queries in flight and one chunk of rows. ``reproducible``: each chunk of `chunk_size` queries (in input
    order) runs alone in held batches from an empty prefix cache, and its rows come in input order.
    """
    if reproducible:
        if not engine.can_hold:  # held batches are the guarantee: without them reruns form other batches
            raise UsageError(
                "--reproducible runs each stage as one batch, held until every request is in, and this vLLM engine "
                "client cannot pause its scheduler; run without --reproducible (or with vLLM's default "
                "multiprocess engine core)"
            )
        for chunk in _batched(queries, chunk_size):
            engine.reset_prefix_cache(required=True)
            flow = Flow(engine, setup, held=True, trace=trace)
            try:
                for query in chunk:
                    flow.add(query)
                rows: list[Row] = []
                while flow.in_flight or flow._finished:
                    rows += flow.step()
            finally:
                flow.close()
            rank = {q.prompt_id: i for i, q in enumerate(chunk)}
            yield sorted(rows, key=lambda row: rank[row["prompt_id"]])
        return

    flow = Flow(engine, setup, trace=trace)
    window = admission_window(engine)
    pending = iter(queries)
    exhausted = False
    buffer: list[Row] = []
    try:
        while True:
            while not exhausted and flow.in_flight < window:
                query = next(pending, None)
                if query is None:
                    exhausted = True
                else:
                    flow.add(query)
            if not flow.in_flight and not flow._finished:
                break
            buffer += flow.step()
            while len(buffer) >= chunk_size:
                yield buffer[:chunk_size]
                del buffer[:chunk_size]
        if buffer:
            yield buffer
    finally:
        flow.close()


def _batched(items: Iterable[Query], size: int) -> Iterator[list[Query]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


class FlowService:
    """One continuous `Flow` on an engine, fed by several callers at once (threads), each waiting for its rows.

    A Ray replica runs two batches at a time: while one batch's last queries finish, the next batch's are
    already admitted, so the replica's engine does not drain between batches.
    """

    def __init__(self, engine: Engine, setup: Setup) -> None:
        self._engine = engine
        self._setup = setup
        self._inbox: queue.Queue[tuple[list[Query], _Waiter]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ssogen-flow", daemon=True)
        self._thread.start()

    def run(self, queries: list[Query]) -> list[Row]:
        """The rows of these queries, once every one of them has finished (in the order they finished)."""
        waiter = _Waiter(expected=len(queries))
        if not queries:
            return []
        self._inbox.put((queries, waiter))
        waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.rows

    def _run(self) -> None:
        flow = Flow(self._engine, self._setup)
        window = admission_window(self._engine)
        waiting: list[Query] = []
        owners: dict[str, _Waiter] = {}
        try:
            while True:
                idle = not flow.in_flight and not waiting and not flow._finished
                try:
                    while True:  # take every batch handed in; block only when there is nothing else to do
                        batch, waiter = self._inbox.get(block=idle)
                        idle = False
                        waiting += batch
                        owners.update((q.prompt_id, waiter) for q in batch)
                except queue.Empty:
                    pass
                while waiting and flow.in_flight < window:
                    flow.add(waiting.pop(0))
                for row in flow.step():
                    owner = owners.pop(row["prompt_id"])
                    owner.rows.append(row)
                    if len(owner.rows) == owner.expected:
                        owner.done.set()
        except BaseException as exc:  # the engine died: every caller hears of it
            for owner in {id(w): w for w in owners.values()}.values():
                owner.error = exc
                owner.done.set()
            while not self._inbox.empty():
                _, waiter = self._inbox.get()
                waiter.error = exc
                waiter.done.set()
            raise


@dataclass
class _Waiter:
    expected: int
    rows: list[Row] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def dry_run_prompts(setup: Setup, query: Query) -> list[list[int]]:
    """The prompts a query would send (selection and principles answered with nothing), without an engine."""
    stages = query_stages(setup, query)
    prompts: list[list[int]] = []
    try:
        asked = next(stages)
        while True:
            prompts += [ask.prompt_ids for ask in asked.values()]
            if any(role in asked for role in ROLES):
                return prompts
            asked = stages.send(dict.fromkeys(asked))
    except StopIteration:
        return prompts
    finally:
        stages.close()
