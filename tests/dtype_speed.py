"""Decode speed of the bundled model on this CPU in bfloat16 and float32, side by side (not a test).

    .venv/bin/python -m tests.dtype_speed [--compiled]

Each dtype runs in its own process (one vLLM engine per process): the same 32 shared queries, 128 tokens each
(`ignore_eos`, seeded), eager unless `--compiled`. Prints tokens/s per dtype and float32's speed-up: the
measurement behind `ssogen.generation.engine.cpu_dtype` (on a CPU without native bfloat16, `auto` runs float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

QUERIES = 32
RESULT = "dtype_speed result: "  # vLLM's processes print to stdout too: the result line is marked
NEW_TOKENS = 128


def measure(dtype: str, compiled: bool) -> dict:
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams

    from ssogen.inputs.models import bundled_model
    from tests.shared import shared_data

    lines = (shared_data() / "user_oriented_instructions.jsonl").read_text().splitlines()[:QUERIES]
    started = time.perf_counter()
    llm = LLM(
        model=bundled_model().path, dtype=dtype, max_model_len=4096, enforce_eager=not compiled, seed=0,
        gpu_memory_utilization=0.2, enable_chunked_prefill=False, max_num_batched_tokens=4096, block_size=32,
    )  # fmt: skip
    start_seconds = time.perf_counter() - started
    tokenizer = llm.get_tokenizer()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": json.loads(line)["instruction"]}], tokenize=False, add_generation_prompt=True
        )
        for line in lines
    ]
    params = SamplingParams(temperature=0.7, top_p=0.8, max_tokens=NEW_TOKENS, ignore_eos=True, seed=0)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"dtype": dtype, "start_s": round(start_seconds, 1), "tokens": tokens, "tok_per_s": tokens / seconds}


def main() -> None:
    compiled = "--compiled" in sys.argv
    if len(sys.argv) > 1 and sys.argv[1] in {"bfloat16", "float32"}:
        print(RESULT + json.dumps(measure(sys.argv[1], compiled)), flush=True)
        return
    results = {}
    for dtype in ("bfloat16", "float32"):
        args = [sys.executable, "-m", "tests.dtype_speed", dtype, *(["--compiled"] if compiled else [])]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        results[dtype] = json.loads(next(line for line in out.splitlines() if line.startswith(RESULT))[len(RESULT) :])
        print(json.dumps(results[dtype]))
    ratio = results["float32"]["tok_per_s"] / results["bfloat16"]["tok_per_s"]
    print(f"dtype_speed: float32_vs_bfloat16={ratio:.2f} compiled={compiled} queries={QUERIES} tokens={NEW_TOKENS}")


if __name__ == "__main__":
    main()
