"""The one settings object of a build, validated in one place.

`BuildConfig` is a typed dataclass whose fields are documented in their ``metadata``: ``help`` (the flag's text),
``group`` (its section of ``ssogen build --help``) and ``choices`` where the values are a fixed set. The CLI turns
every field into a flag, a YAML file (``--config``, or the ``ssogen.yaml`` a build wrote) can set any of them, and
flags override the file. `BuildConfig.validate` is the only place settings are checked: each error names the flag
and the fix, and is raised before any model or engine is touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ssogen.errors import UsageError

# The sections of `ssogen build --help`, in order: (key, title).
GROUPS = (
    ("input", "input: the policy, the queries, the principle library"),
    ("method", "the SSO method"),
    ("generation", "generation: sampling and loop checks"),
    ("engine", "engine (vLLM)"),
    ("output", "output and publishing"),
    ("run", "run control: chunks, shards, Ray"),
)
FEATURE_SELECTION_MODES = ("ranked", "sampled", "random")
EXECUTORS = ("local", "ray")
DTYPES = ("auto", "bfloat16", "float16", "float32")
BLOCK_SIZES = (8, 16, 32, 64, 128, 256)
# Settings renamed since a build's ssogen.yaml may have been written: old name -> new name (read only in such a
# record; see `load_yaml_settings`).
RENAMED = {"revision": "push_branch"}


def _setting(default: Any, help: str, group: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "group": group, **extra})


@dataclass
class BuildConfig:
    """Everything that decides what `ssogen build` produces. A setting left at None takes the default its help names."""

    # --- input --------------------------------------------------------------------------------------------------
    model: str | None = _setting(
        None,
        "Policy model: a local folder or a Hub id (ORG/NAME); not given, the bundled SmolLM2-135M-Instruct.",
        "input",
        metavar="MODEL",
    )
    model_revision: str | None = _setting(
        None,
        "With a Hub --model: the branch, tag or commit to load. The build resolves it to a commit once and records "
        "it; a resume loads that commit whatever happened upstream since. Not given: the repo's main branch.",
        "input",
        metavar="REVISION",
    )
    trust_remote_code: bool = _setting(False, "Allow the model's own Python code from its repository.", "input")
    queries: str | None = _setting(
        None,
        "Queries: a JSONL/JSON/CSV/Parquet file, a dataset folder or a Hub dataset id; not given, the bundled 12 "
        "queries (two each of code, maths, advice, writing, explanation and safety).",
        "input",
        metavar="SOURCE",
    )
    query_column: str | None = _setting(
        None,
        "Column holding the query; not given, the first of prompt, instruction, question, query, messages.",
        "input",
        metavar="COLUMN",
    )
    query_split: str | None = _setting(
        None,
        "Split to read when --queries is a Hub dataset or a dataset folder; not given, train.",
        "input",
        metavar="SPLIT",
    )
    query_config: str | None = _setting(
        None,
        "Config (subset) to read when --queries is a Hub dataset or a dataset folder; not given, its default.",
        "input",
        metavar="CONFIG",
    )
    limit: int | None = _setting(
        None,
        "Use only the first N distinct non-empty queries (empty ones met on the way are reported as dropped).",
        "input",
    )
    principles: Path | None = _setting(
        None, "Folder of principle YAML files (one per feature); not given, the bundled library.", "input"
    )
    prompts: Path | None = _setting(None, "Folder of Jinja prompt templates; not given, the bundled ones.", "input")

    # --- the SSO method -----------------------------------------------------------------------------------------
    num_features: int = _setting(2, "k: features (principle pairs) steering each query.", "method")
    feature_selection: str = _setting(
        "ranked",
        "How each query's features are chosen: ranked (the policy's log-probability of each feature name, calibrated "
        "on reference queries; one prefill per query), sampled (the SSO reference's way: the policy writes a list, "
        "which is shuffled and cut to k) or random.",
        "method",
        choices=FEATURE_SELECTION_MODES,
    )
    selection_temperature: float = _setting(
        0.7, "With --feature-selection sampled: sampling temperature of the list.", "method"
    )
    selection_top_p: float = _setting(0.8, "With --feature-selection sampled: top-p of the list.", "method")
    selection_max_tokens: int = _setting(32, "With --feature-selection sampled: token limit of the list.", "method")
    generate_principles: bool = _setting(
        False, "Let the policy write query-specific principles as JSON (library text on any failure).", "method"
    )
    principle_max_tokens: int = _setting(
        512, "With --generate-principles: token limit of a generated-principles answer.", "method"
    )
    alpha: float = _setting(
        0.66,
        "α in W = sigmoid(-(α·π̃(y+|x) + (1-α)·π̃(y-|x))); 0.66 as in the SSO authors' training script.",
        "method",
    )
    seed: int = _setting(0, "Run seed: feature choice and every sampled answer derive from it.", "method")
    round: int = _setting(0, "SSO training round this data is generated for (recorded in every row).", "method")

    # --- generation ---------------------------------------------------------------------------------------------
    temperature: float = _setting(0.7, "Sampling temperature for y+, y- and y°.", "generation")
    top_p: float = _setting(0.8, "Nucleus sampling top-p for y+, y- and y°.", "generation")
    max_new_tokens: int = _setting(
        2048, "Token limit per answer; answers cut by it are kept and flagged.", "generation"
    )
    repetition_max_pattern: int = _setting(
        32,
        "The engine ends an answer whose last --repetition-min-count n-grams are the same, for n up to this many "
        "tokens (vLLM's repetition detection; finish reason 'repetition'). 0 turns it off.",
        "generation",
    )
    repetition_min_pattern: int = _setting(
        1, "The shortest n-gram (in tokens) the repetition check looks for.", "generation"
    )
    repetition_min_count: int = _setting(
        8,
        "How many times in a row an n-gram must repeat at the end of an answer for the engine to end it.",
        "generation",
    )
    loop_compression: float = _setting(
        0.15,
        "Text that zlib compresses below this fraction of its size (every digit read as 0) circles on near-copies of "
        "itself: an answer whose last 1,024 bytes do, checked every 64 tokens from the 256th while it is written, is "
        "aborted as a loop (finish reason 'repetition'), and an answer cut by the token limit is judged whole the "
        "same way. 0 turns both off.",
        "generation",
    )

    # --- engine ---------------------------------------------------------------------------------------------------
    dtype: str = _setting(
        "auto",
        "Model dtype for vLLM. auto: the model's own, except on a CPU without native bfloat16 (no AVX-512 BF16 or "
        "AMX), where it is float32 (bfloat16 is emulated there, and slower).",
        "engine",
        choices=DTYPES,
    )
    max_model_len: int | None = _setting(
        None,
        "Context length (prompt + answer) per sequence; not given, the model's own (on a GPU vLLM shortens it to what "
        "the memory holds).",
        "engine",
    )
    tensor_parallel_size: int = _setting(1, "GPUs per engine (tensor parallelism).", "engine")
    gpu_memory_utilization: float | None = _setting(
        None,
        "Fraction of device memory for vLLM; not given, 0.9 on a GPU. On a CPU, when given, vLLM sizes its KV cache as "
        "this fraction of the NUMA node's memory less the model's; not given, the KV cache is 15 % of RAM.",
        "engine",
    )
    enforce_eager: bool | None = _setting(
        None,
        "Skip graph compilation: a faster start, slower steps. Not given: eager on a CPU (compiling pays only on long "
        "builds there), compiled on a GPU.",
        "engine",
    )
    enable_prefix_caching: bool = _setting(True, "Reuse the KV cache across prompts that share a prefix.", "engine")
    block_size: int | None = _setting(
        None,
        "KV-cache block size in tokens; not given, 32 on a CPU and vLLM's own on a GPU. Prefix caching shares whole "
        "blocks, so smaller ones let scoring reuse more of the bare query's KV; on a CPU it must be a multiple of 32.",
        "engine",
        choices=BLOCK_SIZES,
    )
    max_num_seqs: int | None = _setting(
        None,
        "Sequences the engine runs in one step (vLLM's slots); not given, vLLM's default for the device. The build "
        "keeps about twice as many in flight so the slots stay full.",
        "engine",
    )
    cpu_reserved_cores: int | None = _setting(
        None,
        "CPU only: cores kept free of model threads for vLLM's scheduler; not given, 0 (every core runs the model).",
        "engine",
    )

    # --- output and publishing ----------------------------------------------------------------------------------
    output: Path = _setting(Path("ssogen-output"), "Output folder (the Hub dataset layout).", "output")
    test_size: float = _setting(0.05, "Share of queries in the test split (seeded, decided per query).", "output")
    license: str = _setting(
        "other",
        "License named in the dataset card (that of your model and queries), a Hub license id.",
        "output",
        metavar="ID",
    )
    language: str = _setting(
        "en", "Language code(s) of the queries, comma-separated (e.g. en,fr), for the card.", "output", metavar="CODES"
    )
    parent: str | None = _setting(
        None,
        "The previous round's dataset (Hub id or folder), named in the card as this round's parent.",
        "output",
        metavar="DATASET",
    )
    card_plots: bool = _setting(
        False, "Embed the summary plots (W, π̃, lengths, features, drops) in the dataset card.", "output"
    )
    push_to_hub: str | None = _setting(
        None, "After the build, publish the folder to this Hub dataset (ORG/NAME).", "output", metavar="ORG/NAME"
    )
    private: bool | None = _setting(
        None,
        "Make the Hub repository private, an existing public one too (--no-private: public). Neither: "
        "a new repo gets its namespace's default visibility and an existing one keeps its own.",
        "output",
    )
    push_branch: str | None = _setting(
        None,
        "The Hub branch a push commits to; not given, main. Each round is also tagged.",
        "output",
        metavar="BRANCH",
    )
    overwrite_round: bool = _setting(False, "Move the Hub tag round-<r> if that round was published before.", "output")
    replace_repo_data: bool = _setting(
        False,
        "Let a push delete or replace files in the Hub repo that ssogen did not publish (it lists them).",
        "output",
    )

    # --- run control -----------------------------------------------------------------------------------------------
    chunk_size: int = _setting(
        256,
        "Finished queries saved together (the unit of durability: a kill loses at most the queries in flight and one "
        "unsaved chunk). The engine is kept full across chunks; with --reproducible a chunk is also a batch.",
        "run",
    )
    reproducible: bool = _setting(
        False,
        "Run each chunk as held batches (every stage of a chunk released together, the prefix cache emptied between "
        "chunks): reruns and resumes give the same rows to the bit, at the cost of an engine that drains at the end "
        "of every chunk.",
        "run",
    )
    num_shards: int = _setting(1, "Split the queries into this many shards by query id (one job per shard).", "run")
    shard_index: int = _setting(0, "Which shard this job builds, 0 to --num-shards minus 1.", "run")
    executor: str = _setting(
        "local", "Where the engine runs: local (this process) or ray (a Ray Data actor pool).", "run", choices=EXECUTORS
    )
    replicas: int = _setting(1, "With --executor ray: engine replicas, each with --tensor-parallel-size GPUs.", "run")
    ray_address: str | None = _setting(
        None,
        "With --executor ray: the cluster to join; not given, RAY_ADDRESS, else a local one.",
        "run",
        metavar="ADDRESS",
    )

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
            (self.replicas >= 1, "replicas", "must be at least 1"),
            (self.max_num_seqs is None or self.max_num_seqs >= 1, "max_num_seqs", "must be at least 1"),
            (
                self.cpu_reserved_cores is None or self.cpu_reserved_cores >= 0,
                "cpu_reserved_cores",
                "must be 0 or more",
            ),
            (0 <= self.shard_index < max(self.num_shards, 1), "shard_index", "must be in [0, --num-shards)"),
            (self.round >= 0, "round", "must be 0 or more"),
            (self.selection_temperature >= 0.0, "selection_temperature", "must be 0 or more"),
            (0.0 < self.selection_top_p <= 1.0, "selection_top_p", "must be in (0, 1]"),
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
        ]
        # A fixed set of values (also what argparse offers; a YAML file can hold anything).
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None:
                checks.append((value in choices, f.name, f"must be one of {', '.join(map(str, choices))}"))
        for name in ("query_split", "query_config", "model_revision", "push_branch"):
            value = getattr(self, name)
            checks.append((value is None or (isinstance(value, str) and bool(value.strip())), name, "must be a name"))
        for ok, name, fix in checks:
            if not ok:
                raise UsageError(f"--{flag(name)}: {getattr(self, name)!r} {fix}.")
        if self.max_model_len is not None and self.max_new_tokens >= self.max_model_len:
            raise UsageError(
                f"--max-new-tokens ({self.max_new_tokens}) must be smaller than --max-model-len "
                f"({self.max_model_len}): the prompt needs room too."
            )
        self._check_applicable()
        self._check_publishing()
        if self.output.exists() and not self.output.is_dir():
            raise UsageError(f"--output: {self.output} is a file; give a folder path.")
        return self

    def _check_applicable(self) -> None:
        """Refuse a setting given a value that nothing would read: no setting is silently ignored."""
        needs = {
            "selection_temperature": ("--feature-selection sampled", self.feature_selection == "sampled"),
            "selection_top_p": ("--feature-selection sampled", self.feature_selection == "sampled"),
            "selection_max_tokens": ("--feature-selection sampled", self.feature_selection == "sampled"),
            "principle_max_tokens": ("--generate-principles", self.generate_principles),
            "private": ("--push-to-hub", self.push_to_hub is not None),
            "push_branch": ("--push-to-hub", self.push_to_hub is not None),
            "overwrite_round": ("--push-to-hub", self.push_to_hub is not None),
            "replace_repo_data": ("--push-to-hub", self.push_to_hub is not None),
            "replicas": ("--executor ray", self.executor == "ray"),
            "ray_address": ("--executor ray", self.executor == "ray"),
            "shard_index": ("--num-shards N (more than 1)", self.num_shards > 1),
            "model_revision": ("a Hub --model (ORG/NAME)", self.model is not None and not Path(self.model).exists()),
        }
        defaults = {f.name: f.default for f in fields(self)}
        for name, (needed, applies) in needs.items():
            if not applies and getattr(self, name) != defaults[name]:
                raise UsageError(f"--{flag(name)} is only read with {needed}; drop it or add {needed}.")

    def _check_publishing(self) -> None:
        """The Hub's vocabulary (--license, --language, --push-to-hub), and --push-to-hub with shards."""
        from ssogen.hubmeta import language_problem, license_problem, validate_repo_id

        for name, problem in (
            ("license", license_problem(self.license)),
            ("language", language_problem(self.language)),
        ):
            if problem:
                raise UsageError(f"--{flag(name)}: {problem}.")
        if self.push_to_hub is None:
            return
        validate_repo_id(self.push_to_hub)
        if self.num_shards > 1:
            raise UsageError(
                f"--push-to-hub cannot be used with --num-shards {self.num_shards}: each shard holds a fraction of "
                f"the data, and the first to finish would publish it as the whole round. Build the shards without "
                f"--push-to-hub, then publish their merge: `ssogen merge SHARD_FOLDERS... --output MERGED && "
                f"ssogen push MERGED {self.push_to_hub}`."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready values (Paths become strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def flag(name: str) -> str:
    """The command-line spelling of a field name."""
    return name.replace("_", "-")


def load_yaml_settings(path: Path) -> dict[str, Any]:
    """Read a ``--config`` YAML file into field values, rejecting unknown keys by name.

    The file is either a mapping of setting: value, or the ``ssogen.yaml`` a build wrote (its ``settings`` are
    read, so a run can be repeated from its own record).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise UsageError(f"--config: {path} does not exist.") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--config: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} must hold a mapping of setting: value.")
    record = isinstance(data.get("settings"), dict) and "run" in data  # a build's own record
    if record:
        data = recorded_settings(data)
    known = {f.name for f in fields(BuildConfig)}
    # Only a build's record keeps an old name's meaning: in a file written by hand, `revision` could as well mean
    # the model's, and a push to a branch the user did not mean is not a thing to guess.
    renamed = RENAMED if record else {}
    normalised = {renamed.get(key, key): v for k, v in data.items() if (key := str(k).replace("-", "_"))}
    if "revision" in normalised:
        raise UsageError(
            f"--config: {path} sets revision, which is no longer a setting: write push_branch for the Hub branch a "
            "push commits to, or model_revision for the branch, tag or commit of a Hub --model."
        )
    unknown = sorted(set(normalised) - known)
    if unknown:
        raise UsageError(
            f"--config: {path} has unknown setting(s) {', '.join(unknown)}; "
            f"known settings are the flags of `ssogen build --help`."
        )
    return normalised


def recorded_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings of a build's ``ssogen.yaml``, with the model pinned to the commit the build loaded."""
    settings = dict(record["settings"])
    commit = (record.get("run") or {}).get("model_commit")
    if commit and settings.get("model"):
        settings["model_revision"] = commit
    return settings
