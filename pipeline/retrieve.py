"""Error-driven adaptive retrieval: unverified pairs similar to where the reward model fails.

For each scored pair, p = sigmoid(r_chosen - r_rejected) is the RM's confidence in the stored
label. The less confident it is, the more neighbours are fetched: k = k_max when p <= 0.5,
else ceil(k_max * (1 - p)) (method.md). Similarity is measured in the
(conversation, attributes) embedding space, joined with the CLIP image view for pools with
images when `embed.image_model` is set (pipeline.embed_images).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import polars as pl

from pipeline.embed import active_pair_ids, embed_pairs, read_vectors
from pipeline.embed_images import retrieval_table
from pipeline.index import workspace_index
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig, IndexConfig

VIEW = "conversation+attributes"
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
    missing = {"pair_id", "p"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores lack column(s) {sorted(missing)}; expected pair_id and p")
    scores = scores.unique("pair_id", keep="last", maintain_order=True)
    ks = {pid: retrieval_k(float(p), k_max) for pid, p in zip(scores["pair_id"], scores["p"], strict=True)}
    queries = [pid for pid, k in ks.items() if k > 0]
    if not queries:
        return pl.DataFrame(schema=RESULT_SCHEMA)

    active = active_pair_ids(ws)
    wanted = set(active) | set(queries)
    embed_pairs(ws, embed_cfg, VIEW, pair_ids=wanted)
    table = retrieval_table(ws, embed_cfg, VIEW, wanted)
    index = workspace_index(ws, table, index_cfg)
    excluded = set(exclude) | (set(index.ids) - set(active))
    query_ids, query_vectors = read_vectors(ws, table, pair_ids=queries)
    order = {pid: i for i, pid in enumerate(queries)}
    by_query = sorted(range(len(query_ids)), key=lambda i: order[query_ids[i]])
    query_ids = [query_ids[i] for i in by_query]
    query_vectors = query_vectors[by_query]

    best: dict[str, tuple[float, int, str, int]] = {}
    for k in sorted({ks[q] for q in query_ids}):
        rows = [i for i, q in enumerate(query_ids) if ks[q] == k]
        hits = index.search(query_vectors[rows], k, excluded, query_ids=[query_ids[i] for i in rows])
        for i, found in zip(rows, hits, strict=True):
            for rank, (pid, sim) in enumerate(found, start=1):
                # the most similar query wins a shared neighbour; ties go to the earlier query
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
