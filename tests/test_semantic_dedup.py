"""Semantic dedup on real embeddings: constructed near-duplicates go, distinct pairs stay."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.embed import embed_pairs, load_embeddings
from pipeline.semantic_dedup import cosine, find_duplicates, keep_rank, semantic_dedup
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig, SemanticDedupConfig
from schemas.pair import DROPPED_SCHEMA, LabelSource, PairRecord
from tests.embed_pool import hh_records, ultrafeedback_records, variant, write_pool

FAST = EmbedConfig(backend="openvino")


def whitespace_variant(r: PairRecord) -> PairRecord:
    """Spaces before punctuation and doubled line breaks (a different pair_id, same meaning)."""
    return variant(r, conversation=re.sub(r"([,.?!])", r" \1", r.conversation[-1].content),
                   chosen=r.chosen.replace("\n", "\n\n").replace(". ", " . "), ingest_seq=200)


def punctuation_variant(r: PairRecord) -> PairRecord:
    strip = str.maketrans("", "", ",!")
    return variant(r, conversation=r.conversation[-1].content.translate(strip),
                   rejected=r.rejected.translate(strip), ingest_seq=201)


def paraphrase_variant(r: PairRecord) -> PairRecord:
    text = r.conversation[-1].content
    swaps = (("Write", "Compose"), ("write", "compose"), ("Make sure", "Ensure"), ("program", "application"),
             ("the user", "the person"))
    for a, b in swaps:
        text = text.replace(a, b, 1)
    return variant(r, conversation="Please help: " + text, ingest_seq=202)


@pytest.fixture(scope="module")
def dedup_pool(shared_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list]:
    base = ultrafeedback_records(shared_raw, 12) + hh_records(shared_raw, 4, first_seq=50)
    dups = [whitespace_variant(base[0]), punctuation_variant(base[1]), paraphrase_variant(base[2])]
    root = tmp_path_factory.mktemp("dedup-pool")
    ws = Workspace(root)
    write_pool(ws, base + dups)
    embed_pairs(ws, FAST, "conversation")
    return root, base, dups


def test_near_duplicates_dropped_distinct_pairs_kept(
    dedup_pool: tuple[Path, list, list], tmp_path: Path
) -> None:
    shutil.copytree(dedup_pool[0], tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    _, base, dups = dedup_pool
    stats = semantic_dedup(ws, FAST, SemanticDedupConfig(threshold=0.95))
    dropped = pl.from_arrow(ws.read("dropped", schema=DROPPED_SCHEMA))
    # each variant goes, matched to its original (ingested earlier); no original goes
    assert dict(zip(dropped["pair_id"], dropped["kept_pair_id"], strict=True)) == {
        d.pair_id: b.pair_id for d, b in zip(dups, base, strict=False)
    }
    assert (stats.considered, stats.dropped, stats.groups) == (19, 3, 3)
    assert set(dropped["stage"]) == {"semantic-dedup"} and (dropped["similarity"] >= 0.95).all()
    # a second run ignores what was dropped and finds nothing new
    again = semantic_dedup(ws, FAST, SemanticDedupConfig(threshold=0.95))
    assert (again.considered, again.dropped) == (16, 0)
    assert ws.row_count("dropped") == 3


def test_threshold_boundary_is_inclusive(dedup_pool: tuple[Path, list, list]) -> None:
    root, base, dups = dedup_pool
    ids, vectors = load_embeddings(Workspace(root), FAST, "conversation")
    a, b = ids.index(base[2].pair_id), ids.index(dups[2].pair_id)
    sim = float(cosine(vectors[[a]], vectors[[b]])[0])
    rank = np.arange(len(ids))
    at, _ = find_duplicates(vectors, rank, sim)
    assert b in set(at.dropped.tolist())
    above, _ = find_duplicates(vectors, rank, float(np.nextafter(np.float32(sim), np.float32(2))))
    assert b not in set(above.dropped.tolist())


def test_human_label_kept_over_earlier_ai_pair(shared_raw: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ai = ultrafeedback_records(shared_raw, 4, skip=60)
    human_copy = variant(whitespace_variant(ai[0]), label_source=LabelSource.human, ingest_seq=99)
    write_pool(ws, [*ai, human_copy])
    semantic_dedup(ws, FAST, SemanticDedupConfig())
    dropped = ws.read("dropped").to_pylist()
    assert [(d["pair_id"], d["kept_pair_id"]) for d in dropped] == [(ai[0].pair_id, human_copy.pair_id)]


def test_keep_rank_orders_human_then_ingest_seq() -> None:
    pool = pl.DataFrame({
        "pair_id": ["d", "c", "b", "a"],
        "label_source": ["ai", "human", "ai", "unknown"],
        "ingest_seq": [3, 9, 1, -1],
    })
    assert keep_rank(pool).tolist() == [2, 0, 1, 3]


def test_groups_chain_to_the_kept_pair_only() -> None:
    # three points: 0-1 and 1-2 within the threshold, 0-2 not: 1 is dropped for 0, and 2 (now only
    # near a dropped pair) is kept, so every recorded similarity is to a pair that stays
    angle = np.deg2rad(15)
    vectors = np.array([[1, 0], [np.cos(angle), np.sin(angle)], [np.cos(2 * angle), np.sin(2 * angle)]],
                       dtype=np.float32)
    dups, _ = find_duplicates(vectors, np.arange(3), threshold=float(np.cos(np.deg2rad(20))))
    assert dups.dropped.tolist() == [1] and dups.kept.tolist() == [0]


def planted(n: int, dups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors plus `dups` near-copies (cosine ~0.98) of random members."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, 64)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + rng.standard_normal((n, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    source = rng.choice(n, dups, replace=False)
    copies = x[source] + 0.2 / 8 * rng.standard_normal((dups, 64)).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([x, copies]), source


def test_cell_search_finds_what_exhaustive_search_finds() -> None:
    vectors, source = planted(6000, 300)
    rank = np.arange(len(vectors))
    exhaustive, how_exact = find_duplicates(vectors, rank, 0.95)
    cells, how_cells = find_duplicates(vectors, rank, 0.95, exact_max=0)
    assert how_exact.startswith("flat") and "k-means cells" in how_cells
    assert sorted(exhaustive.dropped.tolist()) == list(range(6000, 6300))
    assert exhaustive.kept.tolist() == source[exhaustive.dropped - 6000].tolist()
    # the cell search may miss a rare pair split across cells, never invents one
    assert set(cells.dropped.tolist()) <= set(exhaustive.dropped.tolist())
    assert len(cells.dropped) >= 0.98 * len(exhaustive.dropped)
