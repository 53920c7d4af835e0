"""Error-driven retrieval: k from the RM's confidence, neighbours from the unlabeled pool."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.retrieve import retrieval_k, retrieve_near_failures
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig
from schemas.pair import DROPPED_SCHEMA
from tests.embed_pool import hh_records, ultrafeedback_records, variant, write_pool

FAST = EmbedConfig(backend="openvino")


@pytest.mark.parametrize(
    ("p", "k_max", "k"),
    [(0.0, 8, 8), (0.3, 8, 8), (0.5, 8, 8), (0.51, 8, 4), (0.6, 8, 4), (0.75, 8, 2), (0.875, 8, 1),
     (0.9, 8, 1), (0.99, 8, 1), (1.0, 8, 0), (0.75, 4, 1), (0.2, 16, 16), (0.7, 10, 3)],
)
def test_retrieval_k_follows_the_method(p: float, k_max: int, k: int) -> None:
    assert retrieval_k(p, k_max) == k


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_retrieval_k_rejects_non_probabilities(p: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        retrieval_k(p)


def test_neighbours_respect_exclude_self_dropped_and_k(shared_raw: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    pairs = ultrafeedback_records(shared_raw, 10, skip=120) + hh_records(shared_raw, 4, first_seq=20)
    twin = variant(pairs[0], conversation="Please: " + pairs[0].conversation[-1].content, ingest_seq=90)
    gone = variant(pairs[0], conversation="Kindly: " + pairs[0].conversation[-1].content, ingest_seq=91)
    write_pool(ws, [*pairs, twin, gone])
    ws.append("dropped", pl.DataFrame({
        "pair_id": [gone.pair_id], "stage": ["semantic-dedup"], "reason": ["test"],
        "kept_pair_id": [pairs[0].pair_id], "similarity": [0.99], "detail": ["{}"],
    }), schema=DROPPED_SCHEMA)
    labeled = {pairs[0].pair_id, pairs[1].pair_id, pairs[11].pair_id}
    scores = pl.DataFrame({"pair_id": [pairs[0].pair_id, pairs[1].pair_id, pairs[11].pair_id],
                           "p": [0.2, 0.75, 1.0]})
    found = retrieve_near_failures(ws, FAST, scores, exclude=labeled)

    assert found.columns == ["query_pair_id", "pair_id", "similarity", "rank"]
    assert found["pair_id"].is_unique().all()
    assert not set(found["pair_id"]) & (labeled | {gone.pair_id})
    per_query = dict(found.group_by("query_pair_id").len().iter_rows())
    assert per_query[pairs[0].pair_id] <= 8 and per_query.get(pairs[1].pair_id, 0) <= 2
    assert pairs[11].pair_id not in per_query  # p = 1.0: the RM is sure, nothing to fetch
    first = found.filter(pl.col("query_pair_id") == pairs[0].pair_id).sort("rank")
    assert first["pair_id"][0] == twin.pair_id and first["similarity"][0] > 0.95
    assert first["similarity"].is_sorted(descending=True)
    # a second call reuses the saved index and gives the same answer
    assert retrieve_near_failures(ws, FAST, scores, exclude=labeled).equals(found)


def test_scores_without_p_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"lack column\(s\) \['p'\]"):
        retrieve_near_failures(Workspace(tmp_path), FAST, pl.DataFrame({"pair_id": ["x"]}), exclude=set())


def test_partition_tasks_find_what_one_exact_index_finds_whatever_the_partitioning(
        shared_raw: Path, tmp_path: Path) -> None:
    from pipeline.retrieve import _in_one_index, retrieve
    from schemas.config.embed import IndexConfig
    from schemas.labels import LABELS_SCHEMA

    ws = Workspace(tmp_path)
    pairs = ultrafeedback_records(shared_raw, 24, skip=140) + hh_records(shared_raw, 8, first_seq=40)
    twins = [variant(p, conversation="Please: " + p.conversation[-1].content, ingest_seq=90 + i)
             for i, p in enumerate(pairs[:3])]
    write_pool(ws, [*pairs, *twins])
    # a gold pair is never returned: the tasks read the gold table for their own ids
    ws.append("gold", pl.DataFrame({"pair_id": [twins[1].pair_id], "verdict": ["chosen"], "origin": ["human"],
                                    "round": [1], "detail": [""]}), schema=LABELS_SCHEMA)
    queries = [pairs[0], pairs[1], pairs[2], pairs[30], twins[0]]  # twins[0] is also pairs[0]'s neighbour
    scores = pl.DataFrame({"pair_id": [q.pair_id for q in queries], "p": [0.1, 0.3, 0.8, 0.45, 0.2]})

    answers = [retrieve(ws, FAST, scores, exclude_tables=("gold",), rows_per_partition=rows)
               for rows in (1_000, 7, 2)]
    frames = [a[0] for a in answers]
    assert [a[1]["tasks"] for a in answers] == [1, 5, 18]
    assert all(a[1]["examined"] == len(pairs) + len(twins) and a[1]["unembedded"] == 0 for a in answers)
    for other in frames[1:]:
        assert other.equals(frames[0])
    found = frames[0]
    assert twins[1].pair_id not in set(found["pair_id"])
    assert not (found["pair_id"] == found["query_pair_id"]).any()
    assert found.filter(pl.col("query_pair_id") == pairs[0].pair_id)["pair_id"][0] == twins[0].pair_id

    ks = {q.pair_id: k for q, k in zip(queries, [8, 8, 2, 8, 8], strict=True)}
    flat = _in_one_index(ws, FAST, ks, list(ks), {twins[1].pair_id}, IndexConfig(kind="flat"))
    columns = ["query_pair_id", "pair_id", "rank"]
    assert found.select(columns).equals(flat.select(columns))
    assert (found["similarity"] - flat["similarity"]).abs().max() < 1e-5  # type: ignore[operator]


def test_the_driver_keeps_a_bounded_best_per_query_and_no_hits_in_receipts() -> None:
    from pipeline.retrieve_stage import Best

    best = Best(keep=3)
    receipts = [{"pid": 7, "examined": 10, "candidates": 9, "unembedded": 0,
                 "hits": {"query": [0, 0, 0, 1, 1], "pair_id": [f"p{t}{c}" for c in "abcde"],
                          "similarity": [0.9 - t / 100, 0.5, 0.1, 0.7, 0.7]}} for t in range(40)]
    for start in range(0, 40, 4):
        best.merge(receipts[start:start + 4])
        assert best.hits.height <= 2 * 3
    assert not any("hits" in r for r in receipts)
    assert best.tasks == 40 and best.counts == {"examined": 400, "candidates": 360, "unembedded": 0}
    top = best.hits.filter(pl.col("query") == 0)["pair_id"].to_list()
    assert top == ["p0a", "p1a", "p2a"]
    # equal similarities: the smaller pair_id first, whatever order the receipts came in
    assert best.hits.filter(pl.col("query") == 1)["pair_id"].to_list() == ["p0d", "p0e", "p10d"]


def test_exact_search_finds_the_top_inner_products_and_refuses_a_missing_gpu() -> None:
    import numpy as np

    from pipeline.index_gpu import VectorIndexError
    from pipeline.retrieve_stage import nearest

    rng = np.random.default_rng(0)
    queries, vectors = rng.standard_normal((5, 16), np.float32), rng.standard_normal((40, 16), np.float32)
    sims, rows = nearest(queries, vectors, 4, "no")
    products = queries @ vectors.T
    expected = np.argsort(-products, axis=1)[:, :4]
    assert (rows == expected).all()
    assert np.allclose(sims, np.take_along_axis(products, expected, 1), atol=1e-5)
    assert nearest(queries, vectors[:2], 4, "no")[1].shape == (5, 2)  # k above the rows: all of them
    with pytest.raises(VectorIndexError, match="faiss sees no GPU"):
        nearest(queries, vectors, 4, "yes")
