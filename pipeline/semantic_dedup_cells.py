"""The pieces of the semantic dedup stage that hold no state (pipeline/semantic_dedup_stage.py):
the keep rank as one number, the sampling slot of a pair, the vectors of a partition, the k-means
that makes the cells, the cells of a vector, and the keep-by-rank greedy over every cell's edges."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from pipeline.covers import parts_meeting
from pipeline.parts import read_ids
from pipeline.semantic_dedup import greedy_keep
from pipeline.stage import Partition
from pipeline.store import Workspace

LAST = (1 << 62) - 1
FLAT_CELLS = 256
"""Up to this many cells, one k-means over the sample; beyond, two levels (`train_cells`)."""
REFINE = 3
"""Iterations of one k-means over every cell that follow the two levels."""
EDGE_SCHEMA = {"worse": pl.Utf8, "better": pl.Utf8, "worse_rank": pl.Int64, "better_rank": pl.Int64,
               "similarity": pl.Float32}


def rank_key(frame: pl.DataFrame) -> pl.Expr:
    """The keep rank as one Int64 (lower is kept first; pair_id breaks ties): human labels first,
    then the earliest ingest_seq, unknown sequences last, as `semantic_dedup.keep_rank` orders."""
    seq = pl.col("ingest_seq")
    seq = pl.when(seq.is_null() | (seq < 0)).then(pl.lit(LAST, pl.Int64)).otherwise(seq.cast(pl.Int64))
    human = pl.when(pl.col("label_source") == "human").then(0).otherwise(1).cast(pl.Int64)
    return human * (1 << 62) + seq


def sample_slot() -> pl.Expr:
    """A pair's place in [0, 2^32) for sampling: its hex pair_id's prefix (a hash already)."""
    prefix = pl.col("pair_id").str.slice(0, 8).str.to_integer(base=16, strict=False)
    return prefix.fill_null(pl.col("pair_id").hash(0) % (1 << 32))


def partition_vectors(ws: Workspace, table: str, ids: pl.Series,
                      partition: Partition | None = None) -> list[pl.DataFrame]:
    """The rows of `table` whose pair is one of `ids` (of `partition`), part by part: only the
    parts that may hold the partition's pairs (pipeline/covers.py), each part's key column read
    whole, but vectors only from the row groups that hold a wanted pair (the table is written in
    pool order, so a partition's vectors sit in a few row groups, not the whole table)."""
    found = (read_ids(ws, table, shard["file"], ids, ["pair_id", "vector"])
             for shard in parts_meeting(ws, table, partition))
    return [frame for frame in found if frame is not None]


def _kmeans(vectors: np.ndarray, k: int, iterations: int, start: np.ndarray | None = None) -> np.ndarray:
    """`k` spherical k-means centroids of `vectors` (FAISS, seed 0; from `start` when given); one
    centroid is the mean."""
    import faiss

    if k <= 1:
        mean = vectors.astype(np.float64).mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)[None, :]
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=iterations, seed=0, spherical=True,
                          max_points_per_centroid=256, min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(vectors, np.float32), init_centroids=start)
    return np.asarray(kmeans.centroids, np.float32)


def _shares(total: int, sizes: np.ndarray) -> np.ndarray:
    """`total` cells split over groups of `sizes` vectors in proportion (largest remainder, ties to
    the lower group), none given more cells than it has vectors."""
    exact = total * sizes / max(1, int(sizes.sum()))
    shares = np.minimum(np.floor(exact).astype(np.int64), sizes)
    for group in np.lexsort((np.arange(len(sizes)), -(exact - shares))):
        if shares.sum() >= total:
            break
        if shares[group] < sizes[group]:
            shares[group] += 1
    return shares


def train_cells(vectors: np.ndarray, cells: int, iterations: int, flat: int = FLAT_CELLS) -> np.ndarray:
    """The cell centroids from a sample: one k-means for up to `flat` cells; beyond, a k-means of
    ceil(sqrt(cells)) coarse cells, one k-means inside each coarse cell (its cells in proportion
    to its share of the sample), then `REFINE` iterations of one k-means over every cell started
    from those centroids. One thread, seed 0: the same on every machine.

    Why: one k-means costs sample x cells x dim per iteration, and the sample grows with the cells
    (64 vectors each), so at 40M pairs (8,944 cells, 131k sampled) ten iterations are about 9
    TFLOP in one task. The two levels cost about 2 x sample x sqrt(cells) x dim per iteration, and
    the refinement moves the centroids that a coarse border cut through a dense cluster (without
    it, 4 of 10,000 planted copies at 1M vectors shared none of their original's two cells)."""
    import faiss

    cells = min(cells, len(vectors))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        if cells <= max(1, flat):
            return _kmeans(vectors, cells, iterations)
        coarse = _kmeans(vectors, math.ceil(math.sqrt(cells)), iterations)
        home = assign_cells(vectors, coarse, 1)[:, 0]
        shares = _shares(cells, np.bincount(home, minlength=len(coarse)))
        seeded = np.concatenate([_kmeans(vectors[home == c], int(k), iterations)
                                 for c, k in enumerate(shares) if k])
        return _kmeans(vectors, len(seeded), REFINE, start=seeded) if REFINE else seeded
    finally:
        faiss.omp_set_num_threads(threads)


def assign_cells(vectors: np.ndarray, centroids: np.ndarray, nprobe: int, block: int = 4096) -> np.ndarray:
    """The `nprobe` nearest centroids (inner product) of each vector, nearest first.

    A float32 search (FAISS, exact) shortlists a few cells; the shortlist is re-scored in float64
    and ties go to the lower cell, so a vector's cells do not depend on the block it was scored in."""
    import faiss

    cells = len(centroids)
    probe = min(nprobe, cells)
    if cells == 1:
        return np.zeros((len(vectors), 1), np.int64)
    short = min(cells, probe + 2)
    wide = centroids.astype(np.float64)
    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, np.float32))
    out = np.empty((len(vectors), probe), np.int64)
    for start in range(0, len(vectors), block):
        chunk = np.ascontiguousarray(vectors[start : start + block], np.float32)
        shortlist = flat.search(chunk, short)[1]
        exact = np.einsum("md,msd->ms", chunk.astype(np.float64), wide[shortlist])
        order = np.lexsort((shortlist, -exact))
        out[start : start + len(chunk)] = np.take_along_axis(shortlist, order, axis=1)[:, :probe]
    return out


def resolve(edges: pl.DataFrame) -> pl.DataFrame:
    """(pair_id, kept_pair_id, similarity) of the pairs the greedy drops, in the global keep order
    of every pair an edge touches (rank, then pair_id)."""
    if not edges.height:
        return pl.DataFrame(schema={"pair_id": pl.Utf8, "kept_pair_id": pl.Utf8, "similarity": pl.Float32})
    vertices = pl.concat([
        edges.select(pair_id="worse", rank="worse_rank"), edges.select(pair_id="better", rank="better_rank"),
    ]).unique("pair_id").sort("rank", "pair_id").with_row_index("order")
    lookup = vertices.select("pair_id", pl.col("order").cast(pl.Int64))
    indexed = (edges.unique(["worse", "better"])
               .join(lookup.rename({"pair_id": "worse", "order": "w"}), on="worse")
               .join(lookup.rename({"pair_id": "better", "order": "b"}), on="better")
               .sort("w", "b"))
    n = vertices.height
    dups = greedy_keep(n, np.arange(n), indexed["w"].to_numpy(), indexed["b"].to_numpy(),
                       indexed["similarity"].to_numpy())
    ids = vertices["pair_id"]
    return pl.DataFrame({"pair_id": ids.gather(dups.dropped), "kept_pair_id": ids.gather(dups.kept),
                         "similarity": dups.similarity})
