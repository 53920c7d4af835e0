"""Semantic dedup: drop pairs whose conversation-view embedding is within a cosine threshold of
a pair that is kept.

Pairs are ranked (label_source human first, then the earliest ingest_seq, then pair_id) and
visited in that order: a pair is dropped when it is within the threshold (cosine >= threshold)
of an already kept, better-ranked pair, and records the most similar such pair as
`kept_pair_id`. So every recorded similarity is >= the threshold, two kept pairs are never
within it, and a re-run drops nothing new. A group is a kept pair and the pairs dropped for it.

Candidates come, for small pools or on a GPU, from a FAISS index searched in batches (k-NN,
widened where a query's k-th neighbour is still above the threshold); for large pools on the
CPU, from blocked matrix products of each pair against the members of its nearest k-means
cells (FAISS k-means), which is several times faster than scanning an IVF index one query at
a time. Candidates are re-checked with exact float32 dot products, so the decision never
depends on an approximation. Memory is the vectors plus small blocks, never an N x N matrix.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.embed import active_pair_ids, embed_pairs, load_embeddings
from pipeline.images import image_pair_ids
from pipeline.index import VectorIndex, gpu_count
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig, IndexConfig, SemanticDedupConfig
from schemas.pair import DROPPED_SCHEMA

STAGE = "semantic-dedup"
VIEW = "conversation"
CANDIDATE_SLACK = 0.02
"""How far below the threshold an approximate index score may be and still be re-checked."""

Progress = Callable[[int, int], None]


@dataclass
class DedupStats:
    considered: int
    groups: int
    dropped: int
    threshold: float
    search: str
    seconds: float


@dataclass
class Duplicates:
    """Dropped rows (indices into the input), the kept row each was matched to, and the cosine."""

    dropped: np.ndarray
    kept: np.ndarray
    similarity: np.ndarray

    @property
    def groups(self) -> int:
        return len(np.unique(self.kept))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit float32 vectors, computed the one way every decision uses."""
    return np.einsum("ij,ij->i", np.asarray(a, np.float32), np.asarray(b, np.float32), dtype=np.float32)


def find_duplicates(
    vectors: np.ndarray,
    rank: np.ndarray,
    threshold: float,
    index_cfg: IndexConfig | None = None,
    *,
    exact_max: int = 20_000,
    cells_probed: int = 2,
    progress: Progress | None = None,
) -> tuple[Duplicates, str]:
    """Near-duplicates among unit `vectors`; `rank` orders who is kept (lower wins, unique).

    Up to `exact_max` vectors (or on a GPU) candidates come from batched k-NN over a FAISS
    index; beyond that on the CPU, from exact comparisons within each vector's
    `cells_probed` nearest k-means cells. Returns the duplicates and how candidates were found.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) < 2:
        empty = np.zeros(0, np.int64)
        return Duplicates(empty, empty, np.zeros(0, np.float32)), "none"
    a, b, how = near_pairs(vectors, threshold, index_cfg, exact_max=exact_max, cells_probed=cells_probed,
                           progress=progress)
    return _greedy_keep(vectors, rank, threshold, a, b), how


def near_pairs(
    vectors: np.ndarray,
    threshold: float,
    index_cfg: IndexConfig | None = None,
    *,
    exact_max: int = 20_000,
    cells_probed: int = 2,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Candidate pairs (row a, row b) among unit `vectors`, a superset of the pairs within
    `threshold` (up to the cell search's rare misses), and how they were found; the caller
    re-checks them with `cosine`. The candidate search of `find_duplicates` and of the sharded
    stage's small cell groups (pipeline/semantic_dedup_stage.py)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, "none"
    index_cfg = index_cfg or IndexConfig()
    floor = threshold - CANDIDATE_SLACK
    if n <= exact_max or (index_cfg.use_gpu != "no" and gpu_count() > 0):
        if n <= exact_max:
            index_cfg = index_cfg.model_copy(update={"kind": "flat"})
        index = VectorIndex.build([str(i) for i in range(n)], vectors, index_cfg)
        a, b = _candidates_by_knn(index, vectors, floor, progress)
        return a, b, f"{index.kind} k-NN" + (" (GPU)" if index.on_gpu else "")
    nlist = cell_count(n, cells_probed)
    a, b = _candidates_by_cell(vectors, floor, nlist, cells_probed, index_cfg.train_iterations, progress)
    return a, b, f"{nlist} k-means cells, {cells_probed} probed"


def _candidates_by_knn(
    index: VectorIndex, vectors: np.ndarray, floor: float, progress: Progress | None,
    k: int = 16, batch_rows: int = 16_384,
) -> tuple[np.ndarray, np.ndarray]:
    """Batched k-NN; a query whose k-th neighbour is still above `floor` asks again for 4k."""
    n = len(vectors)
    left, right = [], []
    for start in range(0, n, batch_rows):
        rows = np.arange(start, min(start + batch_rows, n))
        fetch = min(k, n)
        while len(rows):
            sims, labels = index.search_labels(vectors[rows], fetch)
            hit = (labels >= 0) & (sims >= floor) & (labels != rows[:, None])
            q, j = np.nonzero(hit)
            left.append(rows[q])
            right.append(labels[q, j])
            saturated = (sims[:, -1] >= floor) & (labels[:, -1] >= 0)
            if fetch >= n or not saturated.any():
                break
            rows, fetch = rows[saturated], min(n, fetch * 4)
        if progress is not None:
            progress(min(start + batch_rows, n), n)
    return _joined(left), _joined(right)


def cell_count(n: int, cells_probed: int) -> int:
    """k-means cells of the cell search over `n` vectors: about sqrt(cells_probed * n), at least
    39 vectors each."""
    return max(1, min(int(np.sqrt(cells_probed * n)), n // 39))


def _candidates_by_cell(
    vectors: np.ndarray, floor: float, nlist: int, probed: int, iterations: int,
    progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each vector against the members of its `probed` nearest k-means cells (`cell_candidates`).

    Near-duplicates sit close together, so they share a cell or a neighbouring one.
    """
    import faiss

    n, dim = vectors.shape
    kmeans = faiss.Kmeans(dim, nlist, niter=iterations, seed=0, spherical=True,
                          max_points_per_centroid=64)
    sample = np.random.default_rng(0).choice(n, size=min(n, nlist * 64), replace=False)
    kmeans.train(vectors[np.sort(sample)])
    assign = np.concatenate(
        [kmeans.index.search(vectors[i : i + 65_536], probed)[1] for i in range(0, n, 65_536)]
    )
    return cell_candidates(vectors, floor, assign, nlist, progress=progress)


def cell_candidates(
    vectors: np.ndarray, floor: float, assign: np.ndarray, nlist: int, cells: np.ndarray | None = None,
    progress: Progress | None = None, query_block: int = 2048, member_block: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (a, b) with a dot product >= `floor`: each row, for every cell in its row of `assign`
    (its probed cells, nearest first), against the rows whose nearest cell that is; only the
    `cells` given (default: all `nlist`). Products over small blocks keep memory bounded and use
    BLAS instead of one-by-one distance scans. The sharded stage runs it on a group of cells."""
    n = len(vectors)
    probed = assign.shape[1]
    members_order = np.argsort(assign[:, 0], kind="stable")
    member_bounds = np.searchsorted(assign[members_order, 0], np.arange(nlist + 1))
    probe_cells = assign.reshape(-1)
    probe_rows = np.repeat(np.arange(n), probed)
    probe_order = np.argsort(probe_cells, kind="stable")
    probe_bounds = np.searchsorted(probe_cells[probe_order], np.arange(nlist + 1))
    del probe_cells
    searched = np.arange(nlist) if cells is None else np.asarray(cells, np.int64)
    left, right = [], []
    for done, cell in enumerate(searched.tolist(), 1):
        members = members_order[member_bounds[cell] : member_bounds[cell + 1]]
        queries = probe_rows[probe_order[probe_bounds[cell] : probe_bounds[cell + 1]]]
        for q0 in range(0, len(queries), query_block):
            qs = queries[q0 : q0 + query_block]
            for m0 in range(0, len(members), member_block):
                ms = members[m0 : m0 + member_block]
                qi, mi = np.nonzero(vectors[qs] @ vectors[ms].T >= floor)
                distinct = qs[qi] != ms[mi]
                left.append(qs[qi][distinct])
                right.append(ms[mi][distinct])
        if progress is not None and (done % 64 == 1 or done == len(searched)):
            progress(done, len(searched))
    return _joined(left), _joined(right)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _greedy_keep(
    vectors: np.ndarray, rank: np.ndarray, threshold: float, a: np.ndarray, b: np.ndarray
) -> Duplicates:
    """Visit pairs best-ranked first; drop one within the threshold of a kept better pair."""
    # each undirected candidate edge once, oriented (worse -> better)
    worse = np.where(rank[a] > rank[b], a, b)
    better = np.where(rank[a] > rank[b], b, a)
    edges = np.unique(np.stack([worse, better], axis=1), axis=0) if len(a) else np.zeros((0, 2), np.int64)
    worse, better = edges[:, 0], edges[:, 1]
    sims = cosine(vectors[worse], vectors[better]) if len(edges) else np.zeros(0, np.float32)
    close = sims >= np.float32(threshold)
    return greedy_keep(len(vectors), rank, worse[close], better[close], sims[close])


def greedy_keep(n: int, rank: np.ndarray, worse: np.ndarray, better: np.ndarray,
                sims: np.ndarray) -> Duplicates:
    """The keep-by-rank decision over edges within the threshold (worse -> better row, cosine):
    a row is dropped for its most similar better-ranked row that is kept, so the result depends
    only on the edges and the ranks, not on the order they were found in."""
    # visit by the worse pair's rank; within it, its most similar better pair first
    order = np.lexsort((-sims, rank[worse]))
    kept = np.ones(n, dtype=bool)
    dropped, kept_for, similarity = [], [], []
    for e in order:
        w, keeper = int(worse[e]), int(better[e])
        if not kept[w] or not kept[keeper]:
            continue
        kept[w] = False
        dropped.append(w)
        kept_for.append(keeper)
        similarity.append(float(sims[e]))
    return Duplicates(
        np.asarray(dropped, np.int64), np.asarray(kept_for, np.int64), np.asarray(similarity, np.float32)
    )


def keep_rank(pool: pl.DataFrame) -> np.ndarray:
    """Rank of each row (0 = kept first): human labels, then earliest ingest_seq, then pair_id."""
    ordered = pool.with_row_index("row").sort(
        [
            pl.col("label_source") != "human",
            pl.when(pl.col("ingest_seq") < 0).then(None).otherwise(pl.col("ingest_seq")),
            "pair_id",
        ],
        nulls_last=True,
    )
    rank = np.empty(len(pool), dtype=np.int64)
    rank[ordered["row"].to_numpy()] = np.arange(len(pool))
    return rank


def semantic_dedup(
    ws: Workspace,
    embed_cfg: EmbedConfig,
    dedup_cfg: SemanticDedupConfig,
    index_cfg: IndexConfig | None = None,
    *,
    progress: Progress | None = None,
) -> DedupStats:
    """Embed what is missing, find near-duplicates in the active pool, record them in `dropped`."""
    started = time.perf_counter()
    active = active_pair_ids(ws)
    with_images = image_pair_ids(ws)
    if with_images:  # their text view ignores the image: image near-dups are pipeline.clean_images'
        active = [p for p in active if p not in with_images]
    embed_pairs(ws, embed_cfg, VIEW, pair_ids=active)
    ids, vectors = load_embeddings(ws, embed_cfg, VIEW, pair_ids=active)
    pool = (
        ws.scan("pool")
        .select("pair_id", "label_source", "ingest_seq")
        .unique("pair_id", keep="first", maintain_order=True)
        .collect()
    )
    pool = pl.DataFrame({"pair_id": ids}, schema={"pair_id": pl.Utf8}).join(
        pool, on="pair_id", how="left", maintain_order="left")
    dups, how = find_duplicates(vectors, keep_rank(pool), dedup_cfg.threshold, index_cfg,
                                exact_max=dedup_cfg.exact_max, cells_probed=dedup_cfg.cells_probed,
                                progress=progress)
    if len(dups.dropped):
        detail = json.dumps({"threshold": dedup_cfg.threshold, "model": embed_cfg.model, "view": VIEW})
        rows = pa.table(
            {
                "pair_id": [ids[i] for i in dups.dropped],
                "stage": [STAGE] * len(dups.dropped),
                "reason": [f"cosine >= {dedup_cfg.threshold} to a kept pair"] * len(dups.dropped),
                "kept_pair_id": [ids[i] for i in dups.kept],
                "similarity": dups.similarity.astype(np.float64),
                "detail": [detail] * len(dups.dropped),
            }
        )
        ws.append("dropped", rows, unique_key=["pair_id", "stage"], schema=DROPPED_SCHEMA)
    return DedupStats(
        considered=len(ids),
        groups=dups.groups,
        dropped=len(dups.dropped),
        threshold=dedup_cfg.threshold,
        search=how,
        seconds=time.perf_counter() - started,
    )
