"""The one settings object of a build, validated in one place.

`BuildConfig` is a typed dataclass whose fields are documented in their ``metadata["help"]``; the CLI
turns every field into a flag, a YAML file (``--config``) can set any of them, and flags override the
file. `BuildConfig.validate` is the only place settings are checked: each error names the flag and the
fix, and is raised before any model or engine is touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ssogen.errors import UsageError

# `--feature-selection` (kept here, not imported from ssogen.generation.steer, so the settings load without the method).
FEATURE_SELECTION_MODES = ("ranked", "sampled", "random")


def _setting(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class BuildConfig:
    """Everything that decides what `ssogen build` produces."""

    # --- inputs -----------------------------------------------------------------------------------
    model: str | None = _setting(
        None,
        "Policy model: a local folder, a Hub id, or empty for the bundled SmolLM2-135M-Instruct.",
    )
    queries: str | None = _setting(
        None,
        "Queries: a JSONL/JSON/CSV/Parquet file or a Hub dataset id; empty for the bundled 12 queries (two "
        "each of code, maths, advice, writing, explanation and safety).",
    )
    query_column: str | None = _setting(
        None,
        "Column holding the query (default: the first of prompt, instruction, question, query, messages).",
    )
    limit: int | None = _setting(
        None, "Use only the first N distinct non-empty queries (empty ones met on the way are reported as dropped)."
    )
    principles: Path | None = _setting(
        None, "Folder of principle YAML files (one per feature); empty for the bundled library."
    )
    prompts: Path | None = _setting(None, "Folder of Jinja prompt templates; empty for the bundled ones.")
    output: Path = _setting(Path("ssogen-output"), "Output folder (the Hub dataset layout).")
    round: int = _setting(0, "SSO training round this data is generated for (recorded in every row).")
    seed: int = _setting(0, "Run seed: feature choice and every sampled answer derive from it.")

    executor: str = _setting("local", "Where the engine runs: local (this process) or ray (a Ray Data actor pool).")
    replicas: int = _setting(1, "With --executor ray: engine replicas, each with --tensor-parallel-size devices.")
    ray_address: str | None = _setting(
        None, "With --executor ray: the cluster to join (default: RAY_ADDRESS, else local)."
    )
    num_shards: int = _setting(1, "Split the queries into this many shards by query id (one job per shard).")
    shard_index: int = _setting(0, "Which shard this job builds, 0 to --num-shards minus 1.")

    # --- the SSO method -------------------------------------------------------------------------
    num_features: int = _setting(2, "k: features (principle pairs) steering each query.")
    generate_principles: bool = _setting(
        False, "Let the policy write query-specific principles as JSON (library text on any failure)."
    )
    alpha: float = _setting(
        0.66,
        "α in W = sigmoid(-(α·π̃(y+|x) + (1-α)·π̃(y-|x))); 0.66 as in the SSO authors' training script.",
    )
    temperature: float = _setting(0.7, "Sampling temperature for y+, y- and y°.")
    top_p: float = _setting(0.8, "Nucleus sampling top-p for y+, y- and y°.")
    max_new_tokens: int = _setting(2048, "Token limit per answer; answers cut by it are kept and flagged.")
    feature_selection: str = _setting(
        "ranked",
        "How each query's features are chosen: ranked (the policy's log-probability of each feature name, "
        "calibrated on reference queries; one prefill per query), sampled (the SSO reference's way: the policy "
        "writes a list, which is shuffled and cut to k) or random.",
    )
    selection_temperature: float = _setting(0.7, "With --feature-selection sampled: sampling temperature of the list.")
    selection_top_p: float = _setting(0.8, "With --feature-selection sampled: top-p of the list.")
    selection_max_tokens: int = _setting(32, "With --feature-selection sampled: token limit of the list.")
    principle_max_tokens: int = _setting(512, "Token limit of a generated-principles answer.")
    repetition_max_pattern: int = _setting(
        32,
        "The engine ends an answer whose last --repetition-min-count n-grams are the same, for n up to this "
        "many tokens (vLLM's repetition detection; finish reason 'repetition'). 0 turns it off.",
    )
    repetition_min_pattern: int = _setting(1, "The shortest n-gram (in tokens) the repetition check looks for.")
    repetition_min_count: int = _setting(
        8, "How many times in a row an n-gram must repeat at the end of an answer for the engine to end it."
    )
    loop_compression: float = _setting(
        0.15,
        "Text that zlib compresses below this fraction of its size (every digit read as 0) circles on "
        "near-copies of itself: an answer whose last 1,024 bytes do, checked every 64 tokens from the 256th "
        "while it is written, is aborted as a loop (finish reason 'repetition'), and an answer cut by the token "
        "limit is judged whole the same way. 0 turns both off.",
    )
    chunk_size: int = _setting(
        256,
        "Finished queries saved together (the unit of durability: a kill loses at most the queries in flight "
        "and one unsaved chunk). The engine is kept full across chunks; with --reproducible a chunk is also a "
        "batch.",
    )
    reproducible: bool = _setting(
        False,
        "Run each chunk as held batches (every stage of a chunk released together, the prefix cache emptied "
        "between chunks): reruns and resumes give the same rows to the bit, at the cost of an engine that "
        "drains at the end of every chunk.",
    )

    # --- the dataset ---------------------------------------------------------------------------------
    test_size: float = _setting(0.05, "Share of queries in the test split (seeded, decided per query).")
    license: str = _setting("other", "License named in the dataset card (that of your model and queries).")
    parent: str | None = _setting(None, "Hub id of the previous round's dataset, linked from the card.")
    card_plots: bool = _setting(False, "Embed the summary plots (W, π̃, lengths, features, drops) in the dataset card.")
    push_to_hub: str | None = _setting(None, "After the build, publish the folder to this Hub dataset (ORG/NAME).")
    private: bool | None = _setting(
        None,
        "Make the Hub repository private, an existing public one too (--no-private: public). Neither: a new repo "
        "gets its namespace's default visibility and an existing one keeps its own.",
    )
    revision: str | None = _setting(None, "Hub branch to commit to (default: main); each round is also tagged.")
    overwrite_round: bool = _setting(False, "Move the Hub tag round-<r> if that round was published before.")

    # --- more inputs and publishing: validated together in _check_inputs_and_publishing -----------------
    query_split: str | None = _setting(
        None, "Split to read when --queries is a Hub dataset or a dataset folder (default: train)."
    )
    query_config: str | None = _setting(
        None, "Config (subset) to read when --queries is a Hub dataset or a dataset folder (default: its default)."
    )
    language: str = _setting("en", "Language code(s) of the queries, comma-separated (e.g. en,fr), for the card.")
    replace_repo_data: bool = _setting(
        False,
        "Let --push-to-hub delete or replace files in the Hub repo that ssogen did not publish (it lists them).",
    )

    def _check_inputs_and_publishing(self) -> None:
        """The checks of the fields above, of --license, and of --push-to-hub with shards."""
        from ssogen.hubmeta import language_problem, license_problem

        problems = [("license", license_problem(self.license)), ("language", language_problem(self.language))]
        for name in ("query_split", "query_config"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                problems.append((name, f"{value!r} must be a non-empty name (or left out)"))
        for name, problem in problems:
            if problem:
                raise UsageError(f"--{flag(name)}: {problem}.")
        if self.push_to_hub is not None and self.num_shards > 1:
            raise UsageError(
                f"--push-to-hub cannot be used with --num-shards {self.num_shards}: each shard holds a fraction of "
                f"the data, and the first to finish would publish it as the whole round. Build the shards without "
                f"--push-to-hub, then publish their merge: `ssogen merge SHARD_FOLDERS... --output MERGED && "
                f"ssogen push MERGED {self.push_to_hub}`."
            )

    # --- engine -----------------------------------------------------------------------------------
    dtype: str = _setting(
        "auto",
        "Model dtype for vLLM (auto, bfloat16, float16, float32). On a CPU without native bfloat16 (no AVX-512 BF16 "
        "or AMX), auto runs float32: emulated bfloat16 is about 3x slower there.",
    )
    max_model_len: int | None = _setting(
        None,
        "Context length (prompt + answer) per sequence; default: the model's own (on GPU, vLLM shortens it to "
        "what the memory holds).",
    )
    tensor_parallel_size: int = _setting(1, "GPUs per engine (tensor parallelism).")
    gpu_memory_utilization: float | None = _setting(
        None,
        "Fraction of device memory for vLLM; default 0.9 on GPU. On CPU, when set, vLLM sizes its KV cache as this "
        "fraction of the NUMA node's memory less the model's; left out, the KV cache is 15 % of RAM.",
    )
    enforce_eager: bool | None = _setting(
        None,
        "Skip graph compilation: faster start, slower steps. Default: eager on CPU (on this project's 2-core "
        "machine compiling adds about 2 minutes to a first start and speeds decoding about 20 %, so it pays only "
        "past about 60k generated tokens), compiled on GPU.",
    )
    enable_prefix_caching: bool = _setting(True, "Reuse KV cache across prompts sharing a prefix.")
    block_size: int | None = _setting(
        None,
        "KV-cache block size in tokens (default: 32 on CPU, vLLM's own on GPU). Prefix caching shares whole "
        "blocks, so smaller ones let scoring reuse more of the bare query's KV; on CPU it must be a multiple of 32.",
    )
    max_num_seqs: int | None = _setting(
        None,
        "Sequences the engine runs in one step (vLLM's slots; its default: 256 on CPU, 256-1024 on GPUs). The build "
        "keeps about twice as many in flight so the slots stay full.",
    )
    cpu_reserved_cores: int | None = _setting(
        None,
        "CPU only: cores kept free of model threads for vLLM's scheduler (default 0: every core runs the model).",
    )
    trust_remote_code: bool = _setting(False, "Allow the model's own Python code from its repository.")

    def __post_init__(self) -> None:
        # YAML and flags hand us strings; the dataclass promises Paths.
        for name in ("principles", "prompts", "output"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))

    def validate(self) -> BuildConfig:
        """Check every setting; raise `UsageError` naming the flag and the fix."""
        checks: list[tuple[bool, str, str]] = [
            (0.0 <= self.alpha <= 1.0, "alpha", "must be between 0 and 1"),
            (self.temperature >= 0.0, "temperature", "must be 0 (greedy) or more"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (self.max_new_tokens > 0, "max_new_tokens", "must be a positive number of tokens"),
            (self.num_features >= 1, "num_features", "must be at least 1"),
            (self.limit is None or self.limit >= 1, "limit", "must be at least 1 (or left out for all)"),
            (self.chunk_size >= 1, "chunk_size", "must be at least 1"),
            (0.0 <= self.test_size < 1.0, "test_size", "must be in [0, 1)"),
            (self.num_shards >= 1, "num_shards", "must be at least 1"),
            (self.executor in {"local", "ray"}, "executor", "must be local or ray"),
            (self.replicas >= 1, "replicas", "must be at least 1"),
            (self.max_num_seqs is None or self.max_num_seqs >= 1, "max_num_seqs", "must be at least 1"),
            (
                self.cpu_reserved_cores is None or self.cpu_reserved_cores >= 0,
                "cpu_reserved_cores",
                "must be 0 or more",
            ),
            (0 <= self.shard_index < max(self.num_shards, 1), "shard_index", "must be in [0, --num-shards)"),
            (
                self.block_size in (None, 8, 16, 32, 64, 128, 256),
                "block_size",
                "must be one of 8, 16, 32, 64, 128, 256 (a multiple of 32 on CPU)",
            ),
            (self.round >= 0, "round", "must be 0 or more"),
            (self.selection_temperature >= 0.0, "selection_temperature", "must be 0 or more"),
            (0.0 < self.selection_top_p <= 1.0, "selection_top_p", "must be in (0, 1]"),
            (
                self.feature_selection in FEATURE_SELECTION_MODES,
                "feature_selection",
                f"must be one of {', '.join(FEATURE_SELECTION_MODES)}",
            ),
            (self.repetition_max_pattern >= 0, "repetition_max_pattern", "must be 0 (off) or more"),
            (
                1 <= self.repetition_min_pattern <= max(self.repetition_max_pattern, 1),
                "repetition_min_pattern",
                "must be at least 1 and at most --repetition-max-pattern",
            ),
            (self.repetition_min_count >= 2, "repetition_min_count", "must be at least 2"),
            (0.0 <= self.loop_compression < 1.0, "loop_compression", "must be in [0, 1) (0 turns it off)"),
            (self.selection_max_tokens > 0, "selection_max_tokens", "must be positive"),
            (self.principle_max_tokens > 0, "principle_max_tokens", "must be positive"),
            (self.max_model_len is None or self.max_model_len > 0, "max_model_len", "must be positive"),
            (self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be at least 1"),
            (
                self.gpu_memory_utilization is None or 0.0 < self.gpu_memory_utilization <= 1.0,
                "gpu_memory_utilization",
                "must be in (0, 1]",
            ),
            (
                self.dtype in {"auto", "bfloat16", "float16", "float32", "half", "float"},
                "dtype",
                "must be one of auto, bfloat16, float16, float32",
            ),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise UsageError(f"--{flag(name)}: {getattr(self, name)!r} {fix}.")
        if self.max_model_len is not None and self.max_new_tokens >= self.max_model_len:
            raise UsageError(
                f"--max-new-tokens ({self.max_new_tokens}) must be smaller than --max-model-len "
                f"({self.max_model_len}): the prompt needs room too."
            )
        if self.push_to_hub is not None:
            from ssogen.hubmeta import validate_repo_id

            validate_repo_id(self.push_to_hub)
        self._check_inputs_and_publishing()
        if self.output.exists() and not self.output.is_dir():
            raise UsageError(f"--output: {self.output} is a file; give a folder path.")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready values (Paths become strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def flag(name: str) -> str:
    """The command-line spelling of a field name."""
    return name.replace("_", "-")


def load_yaml_settings(path: Path) -> dict[str, Any]:
    """Read a ``--config`` YAML file into field values, rejecting unknown keys by name."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UsageError(f"--config: {path} does not exist.") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--config: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} must hold a mapping of setting: value.")
    known = {f.name for f in fields(BuildConfig)}
    normalised = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(normalised) - known)
    if unknown:
        raise UsageError(
            f"--config: {path} has unknown setting(s) {', '.join(unknown)}; "
            f"known settings are the flags of `ssogen build --help`."
        )
    return normalised
