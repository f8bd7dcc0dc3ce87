"""`--executor ray`: the same SSO stages on a Ray cluster, through Ray Data.

Owns: turning the unfinished queries into a Ray Dataset, the pool of engine replicas (a Ray Data actor pool whose
actors each hold one `ssogen.generation.engine.Engine` and one continuous `ssogen.generation.flow.FlowService`), and
streaming the finished chunks back to the driver, which saves each one as it arrives exactly as a local build does.
So there is one code path for the stages, and a lost replica or a restarted driver costs at most the chunks in
flight: a re-run resumes from the saved ones.

Each replica takes `BATCHES_PER_REPLICA` batches (chunks) at a time, in threads, and feeds both into its one
flow: while one batch's last answers finish, the next batch's queries are already decoding, so a replica's
engine does not drain at the end of every batch.

Why an actor pool of our own engine rather than `ray.data.llm`'s processor: a query is not one engine call
but several dependent ones (select features, [write principles], sample y+/y-/y°, score under x), with
per-request seeds and prompt log-probs; running ssogen's own flow inside the replica keeps local and Ray
builds identical by construction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ssogen.config import BuildConfig
from ssogen.errors import UsageError
from ssogen.generation.engine import EngineError
from ssogen.inputs.sources import Query

logger = logging.getLogger(__name__)

# Replicas note their process id here so operators (and the fault test) can find them.
REPLICAS_DIR = ".ssogen/replicas"
# Batches a replica works on at once (threads feeding one continuous flow).
BATCHES_PER_REPLICA = 2


class Replica:
    """A Ray Data actor: one engine, built once, running the SSO stages on each batch of queries."""

    def __init__(self, settings: dict[str, Any], output: str) -> None:
        from ssogen.generation.engine import Engine
        from ssogen.generation.flow import FlowService, prepare
        from ssogen.generation.plan import engine_settings, plan_build

        config = BuildConfig(**settings)
        # The replica needs the model, library, templates and tokenizer; the queries come in batches.
        self.plan = plan_build(config, load_queries_now=False)
        log_file = str(Path(output) / ".ssogen" / f"engine-replica-{os.getpid()}.log")
        self.engine = Engine(engine_settings(config, self.plan.model, log_file=log_file))
        self.setup = prepare(self.engine, self.plan)
        # --reproducible: each batch alone, in held batches (the Ray pool then sends one batch at a time).
        self.flow = None if config.reproducible else FlowService(self.engine, self.setup)
        marker = Path(output) / REPLICAS_DIR / str(os.getpid())
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from ssogen.output.store import CHUNK_SCHEMA

        queries = [
            Query(
                prompt_id=row["prompt_id"],
                prompt=row["prompt"],
                context=tuple(row["context"] or ()),
                system=row["system"] or "",
            )
            for row in batch.to_pylist()
        ]
        if self.flow is not None:
            rows = self.flow.run(queries)
        else:
            from ssogen.generation.flow import flow_chunks

            chunks = flow_chunks(self.engine, self.setup, queries, chunk_size=len(queries), reproducible=True)
            rows = [row for chunk in chunks for row in chunk]
        return pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)


def ray_chunks(
    config: BuildConfig, todo: list[Query], *, model_commit: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Run the unfinished queries on a pool of `config.replicas` engine replicas; yield each finished chunk.

    ``model_commit``: the commit of the Hub model the build loads, which every replica loads too.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError('--executor ray needs Ray Data: pip install "ssogen[ray]"') from None
    import pyarrow as pa

    from ssogen.output.store import CHUNK_SCHEMA

    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        # Without an address Ray starts a local cluster; the driver's logs stay ssogen's.
        ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    gpus = 0 if _on_cpu() else config.tensor_parallel_size
    columns = ("prompt_id", "prompt", "system", "context")
    rows = [
        {"prompt_id": q.prompt_id, "prompt": q.prompt, "system": q.system, "context": [dict(m) for m in q.context]}
        for q in todo
    ]
    schema = pa.schema([(f.name, f.type) for f in CHUNK_SCHEMA if f.name in columns])
    batches_per_replica = 1 if config.reproducible else BATCHES_PER_REPLICA
    dataset = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=schema)).repartition(
        max(1, -(-len(rows) // config.chunk_size))
    )
    results = dataset.map_batches(
        Replica,
        fn_constructor_kwargs={"settings": _plain(config, model_commit), "output": str(config.output)},
        batch_size=config.chunk_size,
        batch_format="pyarrow",
        # A fixed pool; Ray Data restarts a replica that dies and retries the batches it held. Each replica
        # runs BATCHES_PER_REPLICA batches at once, in threads, so its flow never runs dry between batches.
        compute=ray.data.ActorPoolStrategy(
            size=config.replicas,
            max_tasks_in_flight_per_actor=batches_per_replica,
            enable_true_multi_threading=batches_per_replica > 1,
        ),
        max_concurrency=batches_per_replica,
        num_gpus=gpus,
        num_cpus=1,
    )
    batches = iter(results.iter_batches(batch_size=None, batch_format="pyarrow"))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise EngineError(f"the Ray job failed: {type(exc).__name__}: {first_line}") from exc
        yield batch.cast(CHUNK_SCHEMA).to_pylist()


def _plain(config: BuildConfig, model_commit: str | None = None) -> dict[str, Any]:
    """Settings as plain values for the replicas (Paths as strings), without the executor fields.

    A replica plans again from these settings, on its own node: it is given the Hub model's commit, never the
    branch or tag, which may name a newer commit by the time it starts (and it loads the model through its own
    node's cache, by id and commit).
    """
    values = config.to_dict()
    # A replica runs locally; the pool's own settings would be refused there as settings nothing reads.
    values.update(executor="local", replicas=1, ray_address=None)
    if model_commit:
        values["model_revision"] = model_commit
    return values


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch comes with vLLM
        return True
