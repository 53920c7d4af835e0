"""The FAISS index: exact search, IVF agreeing with it, exclusion, persistence, growth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.embed import embed_pairs, embeddings_table, load_embeddings
from pipeline.index import (
    VectorIndex,
    VectorIndexError,
    choose_kind,
    gpu_cloner_options,
    gpu_count,
    gpu_devices,
    workspace_index,
)
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig, IndexConfig
from tests.embed_pool import ultrafeedback_records, write_pool


def clustered(n: int, dim: int = 64, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres (uniform noise would make recall meaningless)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def ids_of(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def test_flat_search_is_exact_cosine_order() -> None:
    vectors = clustered(500)
    index = VectorIndex.build(ids_of(500), vectors)
    assert index.kind == "flat"
    hits = index.search(vectors[:3], 5)
    for q, found in enumerate(hits):
        brute = np.argsort(-(vectors @ vectors[q]))[:5]
        assert [pid for pid, _ in found] == [f"p{i:05d}" for i in brute]
        assert found[0] == (f"p{q:05d}", pytest.approx(1.0, abs=1e-5))


def test_ivf_agrees_with_flat_on_clustered_sample() -> None:
    vectors = clustered(20_000, seed=1)
    queries = clustered(200, seed=2)
    cfg = IndexConfig(flat_max=1000, nprobe=16)
    ivf = VectorIndex.build(ids_of(20_000), vectors, cfg)
    flat = VectorIndex.build(ids_of(20_000), vectors, IndexConfig(kind="flat"))
    assert ivf.kind == "ivf" and flat.kind == "flat"
    recall = np.mean(
        [
            len({p for p, _ in a} & {p for p, _ in b}) / 10
            for a, b in zip(ivf.search(queries, 10), flat.search(queries, 10), strict=True)
        ]
    )
    assert recall >= 0.95


def test_kind_follows_pool_size() -> None:
    cfg = IndexConfig(flat_max=100, ivfpq_min=1000)
    assert [choose_kind(n, cfg) for n in (100, 101, 999, 1000)] == ["flat", "ivf", "ivf", "ivfpq"]
    assert choose_kind(10, IndexConfig(kind="hnsw")) == "hnsw"
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):  # at config load now
        IndexConfig(kind="annoy")


def test_exclude_is_respected_and_still_fills_k() -> None:
    vectors = clustered(300, seed=3)
    index = VectorIndex.build(ids_of(300), vectors)
    nearest = [p for p, _ in index.search(vectors[:1], 40)[0]]
    exclude = set(nearest[:30])  # the 30 nearest, including the query itself
    found = index.search(vectors[:1], 8, exclude)[0]
    assert len(found) == 8 and not exclude & {p for p, _ in found}
    assert [p for p, _ in found] == nearest[30:38]
    own = index.search(vectors[:2], 3, query_ids=["p00000", "p00001"])
    assert "p00000" not in {p for p, _ in own[0]} and "p00001" not in {p for p, _ in own[1]}


def test_save_load_round_trip_then_incremental_add(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    vectors = clustered(2000, seed=4)
    cfg = IndexConfig(flat_max=500)
    index = VectorIndex.build(ids_of(1500), vectors[:1500], cfg)
    index.save(ws, "demo", {"note": "test"})
    loaded = VectorIndex.load(ws, "demo")
    assert (loaded.kind, len(loaded), loaded.ids) == ("ivf", 1500, index.ids)
    assert loaded.search(vectors[1500:1510], 5) == index.search(vectors[1500:1510], 5)
    assert loaded.add(ids_of(2000)[1400:], vectors[1400:]) == 500  # 100 already there
    assert len(loaded) == 2000 and loaded.search(vectors[1999], 1)[0][0][0] == "p01999"
    loaded.save(ws, "demo")
    assert len(VectorIndex.load(ws, "demo")) == 2000
    assert len(ws.listdir("indexes/demo")) == 3  # the older files are gone


def test_auto_flat_becomes_ivf_when_it_outgrows_flat_max() -> None:
    vectors = clustered(3000, seed=5)
    index = VectorIndex.build(ids_of(3000)[:400], vectors[:400], IndexConfig(flat_max=1000))
    assert index.kind == "flat"
    index.add(ids_of(3000)[400:], vectors[400:])
    assert index.kind == "ivf" and len(index) == 3000
    assert index.search(vectors[10], 1)[0][0][0] == "p00010"


def test_workspace_index_grows_with_the_embeddings_table(shared_raw: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    cfg = EmbedConfig(backend="openvino")
    write_pool(ws, ultrafeedback_records(shared_raw, 6, skip=20))
    embed_pairs(ws, cfg, "conversation")
    table = embeddings_table(cfg.model, "conversation")
    first = workspace_index(ws, table)
    assert len(first) == 6
    write_pool(ws, ultrafeedback_records(shared_raw, 2, skip=40, first_seq=10))
    embed_pairs(ws, cfg, "conversation")
    grown = workspace_index(ws, table)
    ids, vectors = load_embeddings(ws, cfg, "conversation")
    assert len(grown) == 8 and set(grown.ids) == set(ids)
    assert VectorIndex.saved_meta(ws, table.replace("/", "--"))["shards"] == [
        s["file"] for s in ws.manifest(table)["shards"]
    ]
    assert grown.search(vectors[-1], 1)[0][0][0] == ids[-1]


def test_ivfpq_on_384_dims_stays_on_the_cpu_without_a_gpu(tmp_path: Path) -> None:
    """96 sub-quantizers: the case GPU faiss needs float16 lookup tables for; the CPU path is unchanged."""
    vectors = clustered(3000, dim=384, seed=8)
    index = VectorIndex.build(ids_of(3000), vectors, IndexConfig(kind="ivfpq", nlist=16, use_gpu="no"))
    assert (index.kind, index.on_gpu) == ("ivfpq", False)
    top = index.search(vectors[:50], 1)
    assert np.mean([hits[0][0] == f"p{q:05d}" for q, hits in enumerate(top)]) >= 0.9
    ws = Workspace(tmp_path)
    index.save(ws, "pq")
    again = VectorIndex.load(ws, "pq", IndexConfig(kind="ivfpq", nlist=16, use_gpu="no"))
    assert again.search(vectors[:5], 3) == index.search(vectors[:5], 3)
    if gpu_count() == 0:
        with pytest.raises(VectorIndexError, match="faiss sees no GPU"):
            VectorIndex.build(ids_of(3000), vectors, IndexConfig(kind="ivfpq", nlist=16, use_gpu="yes"))


@pytest.mark.skipif(gpu_count() == 0, reason="faiss sees no GPU")
def test_ivfpq_moves_to_the_gpu_with_float16_lookup_tables() -> None:
    assert gpu_cloner_options("ivfpq").useFloat16LookupTables
    assert not gpu_cloner_options("ivf").useFloat16LookupTables
    vectors = clustered(3000, dim=384, seed=8)
    index = VectorIndex.build(ids_of(3000), vectors, IndexConfig(kind="ivfpq", nlist=16, use_gpu="yes"))
    assert (index.kind, index.on_gpu) == ("ivfpq", True)
    top = index.search(vectors[:50], 1)
    assert np.mean([hits[0][0] == f"p{q:05d}" for q, hits in enumerate(top)]) >= 0.9


def test_gpu_devices_spread_the_index_over_the_gpus_asked_for() -> None:
    assert gpu_devices(0, IndexConfig()) == ()
    assert gpu_devices(4, IndexConfig()) == (0, 1, 2, 3)  # 0 = every GPU faiss sees
    assert gpu_devices(4, IndexConfig(gpus=2)) == (0, 1)
    assert gpu_devices(2, IndexConfig(gpus=8)) == (0, 1)  # auto takes what there is
    with pytest.raises(VectorIndexError, match=r"index\.gpus = 8, but faiss sees 2"):
        gpu_devices(2, IndexConfig(gpus=8, use_gpu="yes"))
    with pytest.raises(ValueError, match="multi_gpu"):
        IndexConfig(multi_gpu="mirror")  # type: ignore[arg-type]


@pytest.mark.skipif(gpu_count() < 2, reason="faiss sees fewer than 2 GPUs")
def test_a_sharded_index_answers_like_one_gpu() -> None:
    vectors = clustered(3000, dim=384, seed=9)
    one = VectorIndex.build(ids_of(3000), vectors, IndexConfig(kind="ivf", nlist=16, gpus=1, use_gpu="yes"))
    for mode in ("shard", "replicate"):
        many = VectorIndex.build(ids_of(3000), vectors,
                                 IndexConfig(kind="ivf", nlist=16, use_gpu="yes", multi_gpu=mode))
        assert len(many.gpus) == gpu_count()
        top = [h[0][0] for h in one.search(vectors[:50], 1)]
        assert [h[0][0] for h in many.search(vectors[:50], 1)] == top
