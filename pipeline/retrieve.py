"""Error-driven adaptive retrieval: unverified pairs similar to where the reward model fails.

For each scored pair, p = sigmoid(r_chosen - r_rejected) is the RM's confidence in the stored
label. The less confident it is, the more neighbours are fetched: k = k_max when p <= 0.5,
else ceil(k_max * (1 - p)) (method.md). Similarity is measured in the
(conversation, attributes) embedding space, joined with the CLIP image view for pools with
images when `embed.image_model` is set (pipeline.embed_images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import polars as pl

from pipeline.combine_stage import CombineStage
from pipeline.embed import active_pair_ids, embed_pairs, embeddings_table, read_vectors
from pipeline.embed_images import add_combined, combined_table, retrieval_table, uses_images
from pipeline.index import workspace_index
from pipeline.partitions import ROWS_PER_PARTITION, Partition, partition_holding, plan_partitions
from pipeline.parts import Receipt
from pipeline.retrieve_stage import MARGIN, Best, RetrieveStage, partition_vectors, run_local
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig, IndexConfig

VIEW = "conversation+attributes"
RunMap = Callable[[Any, list[Partition], Callable[[list[Receipt]], None]], None]
"""Runs the stage's task per partition and hands each finished window of receipts to the callback."""
RESULT_SCHEMA = {"query_pair_id": pl.String, "pair_id": pl.String, "similarity": pl.Float64, "rank": pl.Int64}


def retrieval_k(p: float, k_max: int = 8) -> int:
    """Neighbours to fetch for a pair the RM scores p: k_max if p <= 0.5, else ceil(k_max * (1 - p))."""
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    if k_max < 0:
        raise ValueError(f"k_max must be >= 0, got {k_max}")
    if p <= 0.5:
        return k_max
    # rounded first so that float noise (8 * (1 - 0.75) = 2.0000000000000004) cannot add one
    return math.ceil(round(k_max * (1.0 - p), 9))


def retrieve_near_failures(
    ws: Workspace,
    embed_cfg: EmbedConfig,
    scores: pl.DataFrame,
    exclude: Iterable[str],
    k_max: int = 8,
    *,
    index_cfg: IndexConfig | None = None,
) -> pl.DataFrame:
    """For each scored pair, its retrieval_k(p) nearest pairs of the active pool.

    `scores` has columns pair_id and p. Neighbours never include `exclude` (e.g. pairs already
    labeled), pairs removed by cleaning, or the query itself. A pair found by several queries
    is returned once, for the query it is most similar to. Result columns: query_pair_id,
    pair_id, similarity (cosine), rank (1 = the query's nearest).
    """
    return retrieve(ws, embed_cfg, scores, exclude=exclude, k_max=k_max, index_cfg=index_cfg)[0]


def retrieve(
    ws: Workspace,
    embed_cfg: EmbedConfig,
    scores: pl.DataFrame,
    *,
    exclude: Iterable[str] = (),
    exclude_tables: tuple[str, ...] = (),
    k_max: int = 8,
    index_cfg: IndexConfig | None = None,
    embed: bool = True,
    rows_per_partition: int = ROWS_PER_PARTITION,
    run_map: RunMap | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """`retrieve_near_failures`, and what it did: tasks, worker PIDs, pairs examined, active pairs
    without a vector.

    The pool is searched by partition tasks (pipeline/retrieve_stage.py): `run_map` runs them
    (a flow's runner; in this process, one after another, without it). `embed` first embeds the
    active pool's missing vectors in this process; a flow that embedded them on its runner passes
    False. Pools with images under an image model are searched in the combined text+image view,
    whose missing rows partition tasks build first (pipeline/combine_stage.py), each window of
    them committed as it finishes. Pairs of `exclude_tables` (gold, silver, verifications) are left
    out by each task for its own ids, so no id list of them reaches the tasks.
    """
    missing = {"pair_id", "p"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores lack column(s) {sorted(missing)}; expected pair_id and p")
    scores = scores.unique("pair_id", keep="last", maintain_order=True)
    ks = {pid: retrieval_k(float(p), k_max) for pid, p in zip(scores["pair_id"], scores["p"], strict=True)}
    queries = [pid for pid, k in ks.items() if k > 0]
    if not queries:
        return pl.DataFrame(schema=RESULT_SCHEMA), {"tasks": 0}
    index_cfg = index_cfg or IndexConfig()
    if embed:
        embed_pairs(ws, embed_cfg, VIEW, rows_per_partition=rows_per_partition)
    partitions = plan_partitions(ws, rows_per_partition)
    combined: dict[str, Any] = {}
    table = embeddings_table(embed_cfg.model, VIEW)
    if uses_images(ws, embed_cfg):
        combined = _combine(ws, embed_cfg, partitions, run_map)
        table = combined_table(embed_cfg, VIEW)
    order = {pid: i for i, pid in enumerate(queries)}
    query_ids, query_vectors = _in_order(*_query_vectors(ws, embed_cfg, table, queries), order)
    stage = RetrieveStage(table, query_vectors, max(ks.values()),
                          exclude=frozenset(exclude), exclude_tables=exclude_tables,
                          use_gpu=index_cfg.use_gpu)
    best = Best(keep=stage.k + 1 + MARGIN)
    if run_map is None:
        run_local(ws, stage, partitions, best)
    else:
        run_map(stage, partitions, best.merge)
    hits: dict[int, list[tuple[str, float]]] = {}
    for q, pid, sim in best.hits.iter_rows():
        if pid != query_ids[q] and len(hits.setdefault(q, [])) < ks[query_ids[q]]:
            hits[q].append((pid, sim))
    stats = {"tasks": best.tasks, "worker_pids": sorted(best.pids), **best.counts, **combined}
    return _one_per_pair(query_ids, [hits.get(q, []) for q in range(len(query_ids))], order), stats


def _combine(ws: Workspace, cfg: EmbedConfig, partitions: list[Partition],
             run_map: RunMap | None) -> dict[str, Any]:
    """The combined rows the active pool lacks, built by partition tasks; each window committed as
    it finishes (a killed run keeps what it committed). What was done, for the step's record."""
    stage = CombineStage(cfg, VIEW)
    done = {"combine_tasks": 0, "combined": 0}

    def commit(receipts: list[Receipt]) -> None:
        stage.commit(ws, receipts)
        done["combine_tasks"] += len(receipts)
        done["combined"] += sum(int(r["combined"]) for r in receipts)

    if run_map is None:
        for partition in partitions:
            commit([stage.run(ws, partition)])
    else:
        run_map(stage, partitions, commit)
    return done


def _query_vectors(ws: Workspace, cfg: EmbedConfig, table: str,
                   queries: list[str]) -> tuple[list[str], np.ndarray]:
    """The queries' vectors, read from the pool parts that hold them; the ones not embedded yet
    (queries that cleaning dropped) are embedded first, and in the combined view of an image pool
    combined here."""
    ids, holding = pl.Series("pair_id", queries), partition_holding(ws, queries)
    found, vectors = partition_vectors(ws, table, ids, holding)
    if len(found) < len(queries):
        missing = sorted(set(queries) - set(found))
        embed_pairs(ws, cfg, VIEW, pair_ids=missing)
        if table != embeddings_table(cfg.model, VIEW):
            add_combined(ws, cfg, VIEW, missing)
        found, vectors = partition_vectors(ws, table, ids, holding)
    return found, vectors


def _in_order(ids: list[str], vectors: np.ndarray, order: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """The found queries and their vectors in the queries' order."""
    by_query = sorted(range(len(ids)), key=lambda i: order[ids[i]])
    return [ids[i] for i in by_query], np.ascontiguousarray(vectors[by_query])


def _in_one_index(ws: Workspace, embed_cfg: EmbedConfig, ks: dict[str, int], queries: list[str],
                  exclude: set[str], index_cfg: IndexConfig, *, embed: bool = True) -> pl.DataFrame:
    """Retrieval over one FAISS index of every active vector, in this process: what retrieval did
    before it ran as partition tasks, kept as the reference the tasks are measured and tested
    against (`synpref bench retrieve`)."""
    active = active_pair_ids(ws)
    wanted = set(active) | set(queries)
    if embed:
        embed_pairs(ws, embed_cfg, VIEW, pair_ids=wanted)
    table = retrieval_table(ws, embed_cfg, VIEW, wanted)
    index = workspace_index(ws, table, index_cfg)
    excluded = exclude | (set(index.ids) - set(active))
    order = {pid: i for i, pid in enumerate(queries)}
    query_ids, query_vectors = _in_order(*read_vectors(ws, table, pair_ids=queries), order)
    found: list[list[tuple[str, float]]] = [[] for _ in query_ids]
    for k in sorted({ks[q] for q in query_ids}):
        rows = [i for i, q in enumerate(query_ids) if ks[q] == k]
        hits = index.search(query_vectors[rows], k, excluded, query_ids=[query_ids[i] for i in rows])
        for i, row_hits in zip(rows, hits, strict=True):
            found[i] = row_hits
    return _one_per_pair(query_ids, found, order)


def _one_per_pair(query_ids: list[str], found: list[list[tuple[str, float]]],
                  order: dict[str, int]) -> pl.DataFrame:
    """Each hit once, for the query it is most similar to (ties: the earlier query); rows by query
    (in `order`), then rank."""
    best: dict[str, tuple[float, int, str, int]] = {}
    for i, row_hits in enumerate(found):
        for rank, (pid, sim) in enumerate(row_hits, start=1):
            candidate = (sim, -i, query_ids[i], rank)
            if pid not in best or candidate[:2] > best[pid][:2]:
                best[pid] = candidate
    if not best:
        return pl.DataFrame(schema=RESULT_SCHEMA)
    frame = pl.DataFrame(
        {
            "query_pair_id": [v[2] for v in best.values()],
            "pair_id": list(best.keys()),
            "similarity": np.asarray([v[0] for v in best.values()], dtype=np.float64),
            "rank": [v[3] for v in best.values()],
        },
        schema=RESULT_SCHEMA,
    )
    return frame.with_columns(pl.col("query_pair_id").replace_strict(order, return_dtype=pl.Int64)
                              .alias("_q")).sort(["_q", "rank"]).drop("_q")
