"""Plan a build: every setting and input loaded and checked before an engine starts.

Owns: `Plan` (the validated settings, the model, the principle library, the templates, the queries, the
output folder, the chat format), which commit of a Hub model a build loads (a resume: the one its folder
recorded), the settings recorded with a dataset and the fingerprint a resume must match, sharding by query id,
and the engine settings a build asks for. Nothing here starts an engine or writes output; the stages
(`ssogen.generation.stages`), the flow (`ssogen.generation.flow`) and the build (`ssogen.generation.pipeline`)
all start from a `Plan`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ssogen import __version__
from ssogen.config import BuildConfig
from ssogen.errors import UsageError
from ssogen.generation.engine import EngineSettings
from ssogen.generation.steer import label_pattern, selectable
from ssogen.inputs.chat import ChatFormat
from ssogen.inputs.library import GENERATION_TEMPLATES, Feature, Templates, files_hash, load_library, resource_dir
from ssogen.inputs.models import COMMIT, ModelRef, model_context_length, resolve_model, where
from ssogen.inputs.sources import Query, QuerySet, iter_queries, load_queries, query_source_options
from ssogen.output.store import SETTINGS_FILE, OutputFolder, ids_digest

logger = logging.getLogger(__name__)


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


def plan_build(config: BuildConfig, *, load_queries_now: bool = True, resume: bool = True) -> Plan:
    """Validate settings and load every input; nothing here starts an engine or writes output.

    ``load_queries_now=False`` leaves the queries to be streamed (the dry run, a Ray replica); they are
    still opened and their first row checked, so a bad query file fails here. ``resume=False`` (--overwrite)
    resolves a Hub model's revision afresh instead of loading the commit the folder's earlier build recorded.
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
    pinned = recorded_commit(config) if resume else None
    model = resolve_model(
        config.model, config.model_revision, trust_remote_code=config.trust_remote_code, commit=pinned
    )
    if model.commit:
        asked = config.model_revision or "its default branch"
        how = f"as the build in {config.output} recorded" if pinned else f"what {asked} names now"
        logger.info("model %s at commit %s (%s)", model.name, model.commit, how)
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
        return AutoTokenizer.from_pretrained(model.path, revision=model.commit, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise UsageError(f"--model: could not load a tokenizer from {where(model)}: {exc}") from None


def recorded_commit(config: BuildConfig) -> str | None:
    """The commit an earlier build in ``--output`` loaded, when it was of the same Hub model and revision.

    So a resume loads what the first run loaded, whatever the branch or tag names upstream since: a re-run that
    resolved it again could meet a newer commit, and either refuse the folder or mix two checkpoints' rows.
    A damaged ssogen.yaml pins nothing (`ssogen.output.store.OutputFolder.prepare` reports it).
    """
    if config.model is None:
        return None
    try:
        record = yaml.safe_load((Path(config.output) / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        return None
    settings, run = record["settings"], record.get("run") or {}
    if (settings.get("model"), settings.get("model_revision")) != (config.model, config.model_revision):
        return None
    commit = run.get("model_commit") if isinstance(run, dict) else None
    return commit if isinstance(commit, str) and COMMIT.fullmatch(commit) else None


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

    A Hub model's commit is ``run.model_commit`` (what `ssogen.config.recorded_settings` pins a re-run to, and
    the card's snippets load); the requested branch or tag stays in ``settings.model_revision``. A local model
    folder is recorded by its full path, so the card and a ``--config`` re-run name it from anywhere.
    """
    principles = config.principles or resource_dir("principles")
    values = config.to_dict()
    if config.model and model.commit is None and Path(model.path).is_dir():
        values["model"] = str(Path(model.path).expanduser().absolute())
    fingerprint = {
        "ssogen_version": __version__,  # chunks of two versions never mix (each chunk also says what wrote it)
        "queries_hash": queries_hash,
        "model": model.name,
        "model_revision": model.revision,
        # Only for a Hub model: a key every fingerprint had would make older folders' chunks foreign.
        **({"model_commit": model.commit} if model.commit else {}),
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
    """The engine's settings: every `EngineSettings` field but the model, its commit and the log is a `BuildConfig`
    field."""
    own = ("model", "revision", "log_file")
    shared = {f.name: getattr(config, f.name) for f in fields(EngineSettings) if f.name not in own}
    if shared["max_model_len"] is None:
        # On CPU vLLM needs the number (chunked prefill is off, so one step must hold a whole prompt); on a
        # GPU None lets vLLM take the model's own context, or the longest that its memory holds.
        from ssogen.generation.engine import on_cpu

        if on_cpu():
            shared["max_model_len"] = model_context_length(model, trust_remote_code=config.trust_remote_code)
    # A Hub model goes to vLLM as its id and commit, never as a folder of this machine's cache: a Ray replica on
    # another node fetches the same commit into its own cache.
    return EngineSettings(model=model.path, revision=model.commit, log_file=log_file, **shared)
