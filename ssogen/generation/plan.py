"""Plan a build: every setting and input loaded and checked before an engine starts.

Owns: `Plan` (the validated settings, the model, the principle library, the templates, the queries, the
output folder, the chat format), the settings recorded with a dataset and the fingerprint a resume must
match, sharding by query id, and the engine settings a build asks for. Nothing here starts an engine or
writes output; the stages (`ssogen.generation.stages`), the flow (`ssogen.generation.flow`) and the build
(`ssogen.generation.pipeline`) all start from a `Plan`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

from ssogen import __version__
from ssogen.config import BuildConfig
from ssogen.errors import UsageError
from ssogen.generation.engine import EngineSettings
from ssogen.generation.steer import label_pattern, selectable
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.library import GENERATION_TEMPLATES, Feature, Templates, files_hash, load_library, resource_dir
from ssogen.inputs.models import ModelRef, model_context_length, resolve_model
from ssogen.inputs.sources import Query, QuerySet, iter_queries, load_queries, query_source_options
from ssogen.output.store import OutputFolder, ids_digest


@dataclass
class Plan:
    """Everything a build needs, loaded and validated before the engine starts."""

    config: BuildConfig
    model: ModelRef
    library: list[Feature]
    templates: Templates
    queries: QuerySet
    folder: OutputFolder
    settings: dict[str, Any]
    chat: ChatFormat
    # The context (prompt + answer) per sequence before an engine says otherwise: --max-model-len, else
    # the model's own. The flow uses the engine's own figure, which vLLM may have shortened on a GPU.
    context_len: int

    @cached_property
    def labels(self) -> re.Pattern[str]:
        """The steering labels the policy may echo at the start of y+ / y- (`ssogen.generation.steer.label_pattern`)."""
        return label_pattern(self.library)


def plan_build(config: BuildConfig, *, load_queries_now: bool = True) -> Plan:
    """Validate settings and load every input; nothing here starts an engine or writes output.

    ``load_queries_now=False`` leaves the queries to be streamed (the dry run, a Ray replica); they are
    still opened and their first row checked, so a bad query file fails here.
    """
    config.validate()
    library = load_library(config.principles)
    templates = Templates(config.prompts)
    if config.num_features > len(selectable(library)):
        raise UsageError(
            f"--num-features: {config.num_features} is more than the {len(selectable(library))} selectable "
            f"features of the principle library; use at most {len(selectable(library))}."
        )
    queries_hash = None
    if load_queries_now:
        queries = load_queries(config.queries, config.query_column, config.limit, **query_source_options(config))
        # Of the whole query list, before sharding: every shard of one build has the same fingerprint.
        queries_hash = ids_digest(q.prompt_id for q in queries.queries + queries.empty)
        if config.num_shards > 1:
            queries = shard(queries, config.num_shards, config.shard_index)
    else:
        next(iter_queries(config.queries, config.query_column, limit=1, **query_source_options(config)))
        queries = QuerySet(queries=[], empty=[], duplicates=0, source=config.queries or "bundled")
    model = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    context_len = config.max_model_len or model_context_length(model, trust_remote_code=config.trust_remote_code)
    if config.max_new_tokens >= context_len:
        raise UsageError(
            f"--max-new-tokens ({config.max_new_tokens}) must be smaller than the model's context "
            f"({context_len} tokens): the prompt needs room too. Lower it, or raise --max-model-len."
        )
    folder = OutputFolder(config.output)
    settings = run_settings(config, model, templates, queries_hash)
    chat = ChatFormat(load_tokenizer(model, trust_remote_code=config.trust_remote_code))
    return Plan(config, model, library, templates, queries, folder, settings, chat, context_len)


def load_tokenizer(model: ModelRef, *, trust_remote_code: bool) -> Any:
    """The model's tokenizer, loaded before any engine so a model without a chat template fails fast."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model.path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise UsageError(f"--model: could not load a tokenizer from {model.path}: {exc}") from None


def shard_of(prompt_id: str, num_shards: int) -> int:
    """The shard of a query: from its id alone, so N independent jobs cover every query exactly once."""
    return int(prompt_id, 16) % num_shards


def shard(queries: QuerySet, num_shards: int, index: int) -> QuerySet:
    def mine(q: Query) -> bool:
        return shard_of(q.prompt_id, num_shards) == index

    return QuerySet(
        queries=[q for q in queries.queries if mine(q)],
        empty=[q for q in queries.empty if mine(q)],
        duplicates=queries.duplicates,
        source=queries.source,
    )


def run_settings(
    config: BuildConfig, model: ModelRef, templates: Templates, queries_hash: str | None = None
) -> dict[str, Any]:
    """The exact settings recorded with the dataset; the fingerprint is what a resume must match.

    ``queries_hash`` (`ssogen.output.store.ids_digest` of the query list) makes the fingerprint cover the queries'
    content, not only their path: a resume never keeps rows of queries that were removed from the input.

    Settings that change neither the rows nor their order (engine sizing, --chunk-size, --reproducible,
    the executor) are recorded but left out of the fingerprint, so a resume may change them.
    """
    principles = config.principles or resource_dir("principles")
    values = config.to_dict()
    fingerprint = {
        "ssogen_version": __version__,  # chunks of two versions never mix (each chunk also says what wrote it)
        "queries_hash": queries_hash,
        "model": model.name,
        "model_revision": model.revision,
        "queries": config.queries or "bundled",
        "query_column": config.query_column,
        "query_split": config.query_split,  # None (train) and absent in older folders compare equal
        "query_config": config.query_config,
        "limit": config.limit,
        "num_shards": config.num_shards,
        "shard_index": config.shard_index,
        "seed": config.seed,
        "round": config.round,
        "alpha": config.alpha,
        "num_features": config.num_features,
        "feature_selection": config.feature_selection,
        "generate_principles": config.generate_principles,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "selection_temperature": config.selection_temperature,
        "selection_top_p": config.selection_top_p,
        "selection_max_tokens": config.selection_max_tokens,
        "principle_max_tokens": config.principle_max_tokens,
        "repetition": [config.repetition_min_pattern, config.repetition_max_pattern, config.repetition_min_count],
        "loop_compression": config.loop_compression,
        "max_model_len": config.max_model_len,
        "dtype": config.dtype,
        "principles_hash": files_hash([*principles.glob("*.yaml"), *principles.glob("*.yml")]),
        "prompts_hash": files_hash([p for name in GENERATION_TEMPLATES if (p := templates.folder / name).is_file()]),
    }
    return {"ssogen_version": __version__, "run": fingerprint, "settings": values}


def engine_settings(config: BuildConfig, model: ModelRef, *, log_file: str | None = None) -> EngineSettings:
    """The engine's settings: every `EngineSettings` field but the model and the log is a `BuildConfig` field."""
    shared = {f.name: getattr(config, f.name) for f in fields(EngineSettings) if f.name not in ("model", "log_file")}
    if shared["max_model_len"] is None:
        # On CPU vLLM needs the number (chunked prefill is off, so one step must hold a whole prompt); on a
        # GPU None lets vLLM take the model's own context, or the longest that its memory holds.
        from ssogen.generation.engine import on_cpu

        if on_cpu():
            shared["max_model_len"] = model_context_length(model, trust_remote_code=config.trust_remote_code)
    return EngineSettings(model=model.path, log_file=log_file, **shared)
