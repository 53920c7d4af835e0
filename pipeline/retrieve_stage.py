"""Retrieval as partition tasks: each task searches its own partition, the driver merges per query.

Retrieval used to build one FAISS index over every vector of the pool in one process (40M x 384
float32 is ~61 GB) and to hold the active pool's id list. Here a task takes one pool partition:
its active pairs (pairs already dropped are left out), less the labeled ones (the `exclude_tables`
filtered to the partition's ids) and any id in `exclude`; their vectors from the embeddings parts
that may hold the partition's pairs (pipeline/covers.py, the last row per pair); and an exact
inner-product search of every query against them (faiss.knn, on a GPU where faiss sees one).
It returns each query's best `k + 1 + MARGIN` (pair_id, cosine): a few rows per query, whatever
the partition's size. `Best` keeps a running top per query as receipts arrive, so the driver holds
queries x (k + 1 + MARGIN) rows, bounded by the gold set, never by the pool.

The search is exact, so the answer does not depend on how the pool is partitioned or where the
tasks run: similarities of the kept hits are recomputed in float64 (a pair's own sum, the same in
any partition) and ties go to the smaller pair_id. MARGIN extra hits per task absorb float32
rounding at the cut-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl

from pipeline.covers import scan_meeting
from pipeline.partitions import Partition, read_partition
from pipeline.parts import Receipt
from pipeline.pool import ids_in_tables
from pipeline.stage import _Timed
from pipeline.store import Workspace

MARGIN = 8
"""Hits a task returns beyond the k + 1 a query needs (its own id may be among them)."""
HITS = {"query": pl.Int64, "pair_id": pl.String, "similarity": pl.Float64}
_gpu: dict[str, Any] = {}


def partition_vectors(ws: Workspace, table: str, ids: pl.Series,
                      partition: Partition | None) -> tuple[list[str], np.ndarray]:
    """(pair ids, unit vectors) of `table` for those of `ids` it holds: the last row per pair,
    read from the parts that may hold `partition`'s pairs (every part without one), in id order."""
    if ids.is_empty() or not ws.has_table(table) or not ws.row_count(table):
        return [], np.zeros((0, 0), np.float32)
    # filtered as it is scanned (no row index before the filter: that would read every vector);
    # the scan keeps part and row order, so the last row kept per pair is the table's last
    frame = (scan_meeting(ws, table, partition).select("pair_id", "vector")
             .filter(pl.col("pair_id").is_in(ids.implode())).collect())
    frame = frame.unique("pair_id", keep="last", maintain_order=True).sort("pair_id")
    if not frame.height:
        return [], np.zeros((0, 0), np.float32)
    vectors = np.ascontiguousarray(frame["vector"].to_numpy(), dtype=np.float32)
    return frame["pair_id"].to_list(), vectors.reshape(frame.height, -1)


def nearest(queries: np.ndarray, vectors: np.ndarray, k: int,
            use_gpu: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of each query among `vectors`: (similarities, row numbers; -1
    where fewer than k exist). On a GPU when faiss sees one (unless `use_gpu` is "no"); `use_gpu`
    "yes" without one is an error, as for an index."""
    import faiss

    from pipeline.index_gpu import VectorIndexError, gpu_count

    k = min(k, len(vectors))
    gpus = gpu_count() if use_gpu != "no" else 0
    if use_gpu == "yes" and not gpus:
        raise VectorIndexError("index.use_gpu = yes, but faiss sees no GPU (install faiss-gpu)")
    if gpus:
        if "res" not in _gpu:  # one set of GPU resources per process, reused by every task
            _gpu["res"] = faiss.StandardGpuResources()
        return faiss.knn_gpu(_gpu["res"], queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)


@dataclass(frozen=True, eq=False)
class RetrieveStage:
    """The nearest active, unlabeled pairs of each query, searched one pool partition at a time."""

    table: str
    queries: np.ndarray
    k: int
    exclude: frozenset[str] = frozenset()
    exclude_tables: tuple[str, ...] = ()
    use_gpu: str = "auto"
    name: ClassVar[str] = "retrieve"
    gpus: ClassVar[float] = 0.0
    """GPUs a task asks for (none: `faiss.knn_gpu` runs where a worker happens to have one)."""

    def run(self, ws: Workspace, partition: Partition) -> Receipt:
        """This partition's best hits per query (no part is written); counts in the receipt."""
        timer = _Timed()
        frames = list(read_partition(ws, partition, ["pair_id"]))
        active = (pl.concat(frames)["pair_id"].unique(maintain_order=True) if frames
                  else pl.Series("pair_id", [], pl.String))
        labeled = ids_in_tables(ws, self.exclude_tables, active)
        if self.exclude:
            labeled = pl.concat([labeled, active.filter(active.is_in(list(self.exclude)))])
        candidates = active.filter(~active.is_in(labeled.implode()))
        ids, vectors = partition_vectors(ws, self.table, candidates, partition)
        hits = pl.DataFrame(schema=HITS)
        if ids and len(self.queries):
            if vectors.shape[1] != self.queries.shape[1]:
                raise ValueError(f"{self.table}: vectors have dimension {vectors.shape[1]}, the queries "
                                 f"{self.queries.shape[1]}")
            _, rows = nearest(self.queries, vectors, self.k + 1 + MARGIN, self.use_gpu)
            query, rank = np.nonzero(rows >= 0)
            picked = rows[query, rank]
            exact = np.sum(self.queries[query].astype(np.float64) * vectors[picked].astype(np.float64),
                           axis=1)
            hits = pl.DataFrame({"query": query.astype(np.int64), "pair_id": [ids[i] for i in picked],
                                 "similarity": exact}, schema=HITS)
        return timer.receipt(self.name, partition.index, active.len(), [], candidates=candidates.len(),
                             unembedded=candidates.len() - len(ids), hits=hits.to_dict(as_series=False))


@dataclass
class Best:
    """The running best hits per query over the receipts merged so far: at most `keep` each."""

    keep: int
    hits: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=HITS))
    tasks: int = 0
    pids: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: {"examined": 0, "candidates": 0, "unembedded": 0})

    def merge(self, receipts: list[Receipt]) -> None:
        """Fold the receipts' hits in; the hits leave the receipts (the driver keeps counts)."""
        frames = [self.hits, *(pl.DataFrame(r.pop("hits"), schema=HITS) for r in receipts)]
        self.hits = (pl.concat(frames).unique(["query", "pair_id"])
                     .sort(["query", "similarity", "pair_id"], descending=[False, True, False])
                     .group_by("query", maintain_order=True).head(self.keep))
        for r in receipts:
            self.tasks += 1
            self.pids.add(int(r["pid"]))
            for key in self.counts:
                self.counts[key] += int(r[key])


def run_local(ws: Workspace, stage: RetrieveStage, partitions: list[Partition], best: Best) -> None:
    """The stage's tasks in this process, one partition after another."""
    for partition in partitions:
        best.merge([stage.run(ws, partition)])
