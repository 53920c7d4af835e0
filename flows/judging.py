"""Judging in shard tasks on the flow's task runner (threads, Dask or Ray workers).

Each shard task judges its pairs with every judge and writes its own judgments (the store's
commits are safe for concurrent writers); the flow holds only the shard receipts. Stage 2 judges
by pool partition (`judge_partitions`): each task reads its own candidates from the candidates
table, routes them with filter A's rule and judges them, so the driver cuts no id list; the
bounded batches of a stage-1 round (evaluation gold, the silver batch, retrieved pairs) are
judged by `judge_in_shards` in shards of their ids. A shard that
fails raises after what it judged is stored, so a re-run judges only what is missing. Shards of
model judges (offline vLLM, reward models) ask the cluster for a GPU (flows.placement); HTTP
judges spread their requests over their endpoints inside each shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.partition_tasks import gather_partition_task, pids, run_partitions
from flows.placement import on_gpu_workers
from flows.progress import step_progress
from flows.tasks import LLM_JUDGES, SHARD_TAG, judge_task, stats_dict
from pipeline.gather import Gather
from pipeline.parts import Receipt
from pipeline.pool import CLUSTERED, clustered_share
from pipeline.stage import Partition, _Timed, plan_partitions
from pipeline.stage2_stage import CANDIDATE, Route, candidate_partitions, candidate_pool_rows, checked_by
from pipeline.store import Workspace
from schemas.config import EmbedConfig, JudgeConfig
from schemas.pair import PairRecord

MODEL_JUDGES = ("vllm", "reward-model", "rm-workspace", "rm-crossfit")
SHARD_ROWS = 2_000
MAX_PARALLEL = 4
GATHER_PARALLEL = 64
"""Gather tasks in flight (cheap reads, no model): the runner's workers bound them further."""


def judge_in_shards(ws: Workspace, judges: list[JudgeConfig], embed: EmbedConfig, pair_ids: list[str],
                    round_: int, seed: int, *, shard_rows: int = SHARD_ROWS,
                    max_parallel: int = MAX_PARALLEL) -> dict[str, Any]:
    """Judge `pair_ids` in shards of `shard_rows`, `max_parallel` shard tasks in flight.

    On a clustered pool (pipeline/ingest_parts.py) the shards are cut from the sorted ids, so
    each reads only the pool parts of its own slice of the id space. Otherwise, with more than one
    shard, the pairs and their attributes are first gathered from the pool in one pass, a task per
    pool partition (pipeline/gather.py), and each shard reads its own from there instead of looking
    them up in the whole pool."""
    ids = list(dict.fromkeys(pair_ids))
    if not ids or not judges:
        return {"shards": 0, "pairs": 0, "judgments_written": 0, "gpu_tasks": False, "worker_pids": []}
    direct = clustered_share(ws) >= CLUSTERED
    if direct:
        ids = sorted(ids)
    shards = [ids[i:i + shard_rows] for i in range(0, len(ids), shard_rows)]
    if len(shards) == 1 or direct:
        return _judge_shards(ws, judges, embed, shards, round_, seed, max_parallel, None)
    gathered = Gather.start(ws, ids)
    try:
        receipts, _ = run_partitions(ws, gather_partition_task, gathered, plan_partitions(ws),
                                     max_parallel=GATHER_PARALLEL)
        result = _judge_shards(ws, judges, embed, shards, round_, seed, max_parallel, gathered)
        return result | {"gathered": sum(int(r["found"]) for r in receipts), "gather_tasks": len(receipts)}
    finally:
        gathered.cleanup(ws)


def _judge_shards(ws: Workspace, judges: list[JudgeConfig], embed: EmbedConfig, shards: list[list[str]],
                  round_: int, seed: int, max_parallel: int, gathered: Gather | None) -> dict[str, Any]:
    from prefect.context import FlowRunContext

    pairs = sum(len(shard) for shard in shards)
    receipts: list[dict[str, Any]] = []
    report = step_progress("judged") if len(shards) > 1 else None
    if FlowRunContext.get() is None:  # called outside a flow (a script, a notebook): in this process
        receipts = [judge_task(ws.uri, judges, embed, shard, round_, seed, gathered) for shard in shards]
        return _summary(receipts, len(shards), pairs, False)
    wants_gpu = any(j.kind in MODEL_JUDGES for j in judges)
    gpus = float(max((j.tensor_parallel_size for j in judges if j.kind == "vllm"), default=1))
    gpu_tasks = False
    done = 0
    for start in range(0, len(shards), max_parallel):
        window = shards[start:start + max_parallel]
        if wants_gpu:
            with on_gpu_workers(gpus) as placed:
                futures = [judge_task.submit(ws.uri, judges, embed, shard, round_, seed, gathered)
                           for shard in window]
            gpu_tasks = gpu_tasks or placed
        else:
            futures = [judge_task.submit(ws.uri, judges, embed, shard, round_, seed, gathered)
                       for shard in window]
        for future, shard in zip(futures, window, strict=True):
            receipts.append(future.result())
            done += len(shard)
            if report is not None:
                report(done, pairs)
    return _summary(receipts, len(shards), pairs, gpu_tasks)


def _summary(receipts: list[dict[str, Any]], shards: int, pairs: int, gpu_tasks: bool) -> dict[str, Any]:
    written = sum(int(r.get("judgments_written", 0)) for r in receipts)
    pids = sorted({int(r["pid"]) for r in receipts if "pid" in r})
    return {"shards": shards, "pairs": pairs, "judgments_written": written, "gpu_tasks": gpu_tasks,
            "worker_pids": pids}


@dataclass(frozen=True)
class Stage2Judging:
    """Stage 2's judging of one partition: model judges on the candidates filter A routes to them,
    rule verifiers (that earned a vote) on every candidate."""

    models: tuple[JudgeConfig, ...]
    rules: tuple[JudgeConfig, ...]
    embed: EmbedConfig
    round: int
    seed: int
    best_round: int
    best_model: str
    route: Route

    @property
    def gpus(self) -> float:
        """GPUs a task asks for: the widest vLLM judge's, or one for any model judge; 0 for rules only."""
        if not any(j.kind in MODEL_JUDGES for j in self.models):
            return 0.0
        return float(max((j.tensor_parallel_size for j in self.models if j.kind == "vllm"), default=1))

    def run(self, ws: Workspace, partition: Partition) -> Receipt:
        """Judge one partition's candidates; the judgments are stored chunk by chunk as they are made."""
        from pipeline.score_stage import scored_among

        timer = _Timed()
        rows = candidate_pool_rows(ws, partition, CANDIDATE).sort("pair_id")
        best = scored_among(ws, self.best_round, self.best_model, rows["pair_id"], partition)
        # In filter A's order (p, then pair_id), as the routed pairs were always judged.
        routed = self.route.to_judges(best).sort(["p", "pair_id"]).select("pair_id")
        written = 0
        if self.models and routed.height:
            by_p = routed.join(rows, on="pair_id", how="inner", maintain_order="left")
            written += _judge(ws, list(self.models), self.embed, by_p, self.round, self.seed, partition)
        checked = 0
        if self.rules and rows.height:
            written += _judge(ws, list(self.rules), self.embed, rows, self.round, self.seed, partition)
            checked = checked_by(ws, {j.name: j.weight for j in self.rules}, rows["pair_id"], self.round,
                                 partition)
        return timer.receipt("stage2-judge", partition.index, rows.height, [],
                             judged=routed.height, rule_checked=checked,
                             judgments_written=written)


def _judge(ws: Workspace, judges: list[JudgeConfig], embed: EmbedConfig, rows: pl.DataFrame, round_: int,
           seed: int, partition: Partition | None = None) -> int:
    """`judge_task`'s work on rows already read: every judge over them; judgments written."""
    from flows.examples import judge_examples
    from pipeline.judges import build_judges, judge_pairs

    records = [PairRecord.from_row(r) for r in rows.to_dicts()]
    ids = [r.pair_id for r in records]
    shots = max((j.examples for j in judges if j.kind in LLM_JUDGES), default=0)
    examples = judge_examples(ws, embed, ids, shots) if shots else {}
    built = build_judges(judges, ws=ws)
    try:
        stats = stats_dict(judge_pairs(ws, built, ids, round_, seed, examples=examples, records=records,
                                       partition=partition))
    finally:
        for judge in built:
            close = getattr(judge, "close", None)
            if close is not None:
                close()
    return int(stats.get("judgments_written", 0))


@task(name="judge-partition", retries=2, tags=[SHARD_TAG], cache_policy=NO_CACHE)
def judge_partition_task(ws_uri: str, stage: Stage2Judging, partition: Partition) -> Receipt:
    return stage.run(Workspace(ws_uri), partition)


def judge_partitions(ws: Workspace, stage: Stage2Judging, *, max_parallel: int = MAX_PARALLEL
                     ) -> dict[str, Any]:
    """Stage 2's judging as one task per partition of the candidates table, `max_parallel` in
    flight; counts only."""
    partitions = candidate_partitions(ws)
    receipts, gpu_tasks = run_partitions(ws, judge_partition_task, stage, partitions,
                                         max_parallel=max_parallel, gpus=stage.gpus,
                                         progress=step_progress("judged"))
    return {"judged": sum(int(r["judged"]) for r in receipts),
            "rule_checked": sum(int(r["rule_checked"]) for r in receipts),
            "judgments_written": sum(int(r["judgments_written"]) for r in receipts),
            "shards": len(receipts), "gpu_tasks": gpu_tasks, "worker_pids": pids(receipts)}
