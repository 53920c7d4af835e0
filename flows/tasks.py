"""Prefect tasks around the pipeline stages: retries, caching on input hashes, shard work.

Every task takes the workspace URI (not a Workspace object) and small, picklable arguments,
so it can run on a thread, a Dask worker or a Ray actor alike. Cache keys hash what a task
reads: the manifests of its input tables (content hashes of every shard), its configuration,
and the workspace's identity (a random id written when the workspace is created), so a fresh
workspace never reuses results of an old one. Shard tasks return rows instead of writing, so
that only the flow writes to a table and no two processes race on a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydantic import BaseModel

from pipeline.attributes_stage import AttributesStage, RunPartitions
from pipeline.gather import Gather
from pipeline.parts import Receipt
from pipeline.semantic_dedup_stage import Call, RunCalls, SemanticDedupStage
from pipeline.stage import Partition
from pipeline.store import Workspace
from schemas.config import (
    EmbedConfig,
    JudgeConfig,
    RMConfig,
    SourceConfig,
)
from schemas.labels import SCORES_SCHEMA

IDENTITY_FILE = "workspace.json"
SHARD_TAG = "synpref-shard"
LLM_JUDGES = ("vllm", "openai")


def workspace_identity(ws: Workspace) -> str:
    """The workspace's random id, created on first use (a new workspace gets a new one)."""
    meta = ws.read_json(IDENTITY_FILE)
    if meta is None:
        meta = {"id": uuid.uuid4().hex}
        ws.write_json(IDENTITY_FILE, meta)
    return str(meta["id"])


def _stable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, pl.DataFrame):
        return hashlib.sha256(value.write_ipc(None).getvalue()).hexdigest()
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    return value


def inputs_key(reads: Iterable[str]) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A cache key over the task's parameters and the manifests of the tables it reads."""
    tables = tuple(reads)

    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        ws = Workspace(parameters["ws_uri"])
        state = {t: [s["sha256"] for s in ws.manifest(t)["shards"]] for t in tables}
        params = {k: _stable(v) for k, v in parameters.items() if k != "ws_uri"}
        payload = json.dumps(
            [context.task.name, workspace_identity(ws), ws.uri, state, params],
            sort_keys=True, default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    return key


def stats_dict(stats: Any) -> dict[str, Any]:
    """Stage stats (dataclass, pydantic model or dict) as a JSON-able dict."""
    if stats is None:
        return {}
    if hasattr(stats, "to_dict"):
        return json.loads(json.dumps(stats.to_dict(), default=str))
    if is_dataclass(stats) and not isinstance(stats, type):
        return json.loads(json.dumps(asdict(stats), default=str))
    if isinstance(stats, BaseModel):
        return stats.model_dump(mode="json")
    if isinstance(stats, dict):
        return json.loads(json.dumps(stats, default=str))
    return {"value": str(stats)}


@task(name="ingest-file", task_run_name="ingest-{token}", cache_policy=NO_CACHE)
def ingest_file_task(ws_uri: str, source: SourceConfig, unit: Any, token: str) -> dict[str, Any]:
    """Stage one unit of a source (a file, a range of a big file, or the whole source:
    pipeline.sources.ranges.Unit) under `_ingest/<token>/`; its receipt. Nothing is committed
    here: the ingest flow commits the sources in config order."""
    from pipeline.ingest import stage_file

    return stage_file(Workspace(ws_uri), source, unit, token)


@task(name="ingest-count-lines", cache_policy=NO_CACHE)
def ingest_count_task(source: SourceConfig, unit: Any) -> int:
    """The newlines of one byte range of a big JSONL file: where the next range's rows start."""
    from pipeline.ingest import count_unit_lines

    return count_unit_lines(source, unit)


@task(name="ingest-part", cache_policy=NO_CACHE)
def ingest_part_task(ws_uri: str, job: Any) -> Receipt:
    """One pool part job (pipeline/ingest_parts.py): a staged batch, less its repeats, as an
    uncommitted pool part or as the pieces of its pair_id ranges; or one range's pieces merged."""
    from pipeline.ingest_parts import write_staged_part

    return write_staged_part(Workspace(ws_uri), job)


@task(name="ingest-repeats", cache_policy=NO_CACHE)
def ingest_repeats_task(ws_uri: str, job: Any) -> Any:
    """A range of one source's key buckets split into new pairs and repeats against the pool's key
    index (pipeline.ingest_repeats.RepeatJob); its receipt."""
    from pipeline.ingest_repeats import split_buckets

    return split_buckets(Workspace(ws_uri), job)


@task(name="exact-dedup", cache_key_fn=inputs_key(["pool", "dropped"]))
def exact_dedup_task(ws_uri: str) -> dict[str, Any]:
    from pipeline.clean import exact_dedup

    return stats_dict(exact_dedup(Workspace(ws_uri)))


@task(name="decontaminate", cache_key_fn=inputs_key(["pool", "dropped"]))
def decontaminate_task(ws_uri: str, benchmarks: list[str], ngram: int) -> dict[str, Any]:
    from pipeline.clean import decontaminate

    return stats_dict(decontaminate(Workspace(ws_uri), benchmarks, n=ngram))


@task(name="semantic-dedup-part", task_run_name="semantic-dedup-{method}", cache_policy=NO_CACHE)
def semantic_dedup_part_task(ws_uri: str, stage: SemanticDedupStage, method: str,
                             args: tuple[Any, ...]) -> Receipt:
    """One call of the semantic dedup stage (a partition's sample or map, the training, a cell's
    reduce, the merge); it writes its own scratch files or part and returns the receipt."""
    return getattr(stage, method)(Workspace(ws_uri), *args)  # type: ignore[no-any-return]


def semantic_dedup_tasks(ws_uri: str) -> RunCalls:
    """The stage's calls of one phase as Prefect tasks on the current flow's task runner."""

    def run(stage: SemanticDedupStage, calls: list[Call]) -> list[Receipt]:
        futures = [semantic_dedup_part_task.submit(ws_uri, stage, method, args) for method, args in calls]
        return [f.result() for f in futures]

    return run


@task(name="attributes-partition", retries=1, cache_policy=NO_CACHE)
def attributes_partition_task(ws_uri: str, stage: AttributesStage, partition: Partition) -> Receipt:
    """One partition's missing attributes as uncommitted parts (attributes, quarantine,
    preverifications); its receipt."""
    return stage.run(Workspace(ws_uri), partition)


def attributes_tasks(ws_uri: str) -> RunPartitions:
    """The stage's partitions as Prefect tasks on the current flow's task runner, all submitted at
    once; progress hears (pairs of finished partitions, pairs planned) as each ends. When a task
    fails, the parts of the others are deleted before the error is raised."""
    from prefect.futures import as_completed

    from pipeline.attributes_stage import discard_all

    def run(stage: AttributesStage, partitions: list[Partition],
            progress: Callable[[int, int], None] | None) -> list[Receipt]:
        total, done = sum(p.rows for p in partitions), 0
        if progress is not None and partitions:
            progress(0, total)
        futures = {attributes_partition_task.submit(ws_uri, stage, p): p for p in partitions}
        receipts: list[Receipt] = []
        failed: BaseException | None = None
        for future in as_completed(list(futures)):
            try:
                receipts.append(future.result())
            except BaseException as exc:  # keep collecting: the others' parts must be deleted too
                failed = failed or exc
            done += futures[future].rows
            if progress is not None:
                progress(done, total)
        if failed is not None:
            discard_all(Workspace(ws_uri), receipts)
            raise failed
        return receipts

    return run


@task(name="train-rm", cache_key_fn=inputs_key(["pool"]))
def train_rm_task(
    ws_uri: str, cfg: RMConfig, train: pl.DataFrame, gold: pl.DataFrame | None, out: str
) -> dict[str, Any]:
    from pipeline.rm import train_rm

    return stats_dict(train_rm(Workspace(ws_uri), cfg, train, gold, out))


@task(name="score-shard", retries=2, tags=[SHARD_TAG])
def score_shard_task(ws_uri: str, rm_dir: str, pair_ids: list[str], round_: int, model_name: str) -> pa.Table:
    """Scores of one shard of pairs by the RM saved at `rm_dir` (rows for the scores table)."""
    from flows.engines import scoring_model
    from pipeline.pool import load_records

    ws = Workspace(ws_uri)
    records = load_records(ws, pair_ids)
    with scoring_model(ws, rm_dir) as model:  # one engine per worker process, reused across shards
        raw = np.asarray(model.score(records), dtype=np.float64).reshape(len(records), 2)
    p = 1.0 / (1.0 + np.exp(-(raw[:, 0] - raw[:, 1])))
    return pa.table(
        {
            "pair_id": [r.pair_id for r in records],
            "round": pa.array([round_] * len(records), pa.int32()),
            "model": [model_name] * len(records),
            "r_chosen": raw[:, 0],
            "r_rejected": raw[:, 1],
            "p": p,
        },
        schema=SCORES_SCHEMA,
    )


@task(name="judge", retries=2)
def judge_task(
    ws_uri: str, judges: list[JudgeConfig], embed: EmbedConfig, pair_ids: list[str], round_: int, seed: int,
    gathered: Gather | None = None,
) -> dict[str, Any]:
    """Judge `pair_ids` with every configured judge; judgments already made are kept on retry.

    LLM judges get up to `examples` nearest gold pairs each as worked examples. With `gathered`,
    the pairs and their attributes are read from that gather's scratch, not looked up in the pool.
    """
    from flows.examples import judge_examples
    from flows.progress import step_progress
    from pipeline.judges import build_judges, judge_pairs

    ws = Workspace(ws_uri)
    shots = max((j.examples for j in judges if j.kind in LLM_JUDGES), default=0)
    examples = judge_examples(ws, embed, pair_ids, shots) if shots else {}
    built = build_judges(judges, ws=ws)
    try:
        reporters = {j.name: step_progress(j.name) for j in built}

        def report(name: str, done: int, total: int) -> None:
            callback = reporters.get(name)
            if callback is not None:
                callback(done, total)

        records, attributes = None, None
        if gathered is not None:
            from pipeline.judges.run import attributes_of

            records = gathered.records(ws, pair_ids)
            attributes = attributes_of(gathered.attribute_rows(ws, pair_ids))
        stats = stats_dict(judge_pairs(ws, built, pair_ids, round_, seed, examples=examples,
                                       progress=report if any(reporters.values()) else None,
                                       records=records, attributes=attributes))
        return stats | {"with_examples": len(examples), "pid": os.getpid()}
    finally:
        for judge in built:
            close = getattr(judge, "close", None)
            if close is not None:
                close()


@task(name="export", cache_key_fn=inputs_key(["pool", "dropped", "gold", "silver", "decisions"]))
def export_task(ws_uri: str, selection: pl.DataFrame | None, shard_rows: int) -> dict[str, Any]:
    """The curated table in shards of `shard_rows` pairs (export.shard_rows), with its card."""
    from pipeline.export import export_curated

    return stats_dict(export_curated(Workspace(ws_uri), selection, shard_rows=shard_rows))
