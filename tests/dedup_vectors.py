"""A pool with planted near-duplicate vectors for the semantic dedup stage tests.

Pairs are written to the pool and their vectors straight to the conversation-view embeddings
table (no encoder): clustered unit vectors, exact-enough copies of some of them (cosine ~0.98,
ingested later, so the copy is the one dropped), and copies of points half-way between two
clusters, which k-means cells tend to split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.embed import embeddings_schema, embeddings_table, vector_table
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig
from schemas.pair import LabelSource, Message, PairRecord
from tests.embed_pool import write_pool

FAST = EmbedConfig(backend="openvino")
DIM = 32


@dataclass
class PlantedPool:
    ids: list[str]
    vectors: np.ndarray
    copies: dict[str, str]
    """pair_id of each planted copy -> pair_id of the pair it copies (the one kept)."""
    boundary: list[tuple[str, str]]
    """(original, copy) pairs planted half-way between two clusters."""


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_pool(ws: Workspace, n: int = 600, copies: int = 30, boundary: int = 8,
                 seed: int = 0) -> PlantedPool:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, DIM)).astype(np.float32)
    base = _unit(centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, DIM)).astype(np.float32))
    picks = rng.choice(n, copies, replace=False)
    near = _unit(base[picks] + 0.2 / np.sqrt(DIM) * rng.standard_normal((copies, DIM)).astype(np.float32))
    halves = _unit(_unit(centres[0:boundary]) + _unit(centres[1 : boundary + 1])
                   + 0.05 * rng.standard_normal((boundary, DIM)).astype(np.float32))
    halves_copy = _unit(halves + 0.2 / np.sqrt(DIM) * rng.standard_normal((boundary, DIM)).astype(np.float32))
    vectors = np.concatenate([base, halves, near, halves_copy])
    # copies are ingested after their originals and are never human-labelled: they are the ones dropped
    first_copy = n + boundary
    records = [PairRecord(conversation=(Message(role="user", content=f"question {i}"),), chosen=f"answer {i}",
                          rejected=f"other {i}", source="planted", source_id=str(i), ingest_seq=i,
                          label_source=LabelSource.human if i % 7 == 0 and i < first_copy else LabelSource.ai)
               for i in range(len(vectors))]
    write_pool(ws, records)
    ids = [r.pair_id for r in records]
    schema = embeddings_schema(DIM, FAST.model, "conversation")
    ws.append(embeddings_table(FAST.model, "conversation"),
              vector_table([(pid, "planted", "") for pid in ids], vectors, schema), schema=schema)
    originals = [int(i) for i in picks] + list(range(n, n + boundary))
    planted = {ids[first_copy + k]: ids[o] for k, o in enumerate(originals)}
    pairs = [(ids[n + k], ids[first_copy + copies + k]) for k in range(boundary)]
    return PlantedPool(ids, vectors, planted, pairs)
