"""Retrieval vectors of image-text pairs: the text view joined with a CLIP image view.

With `embed.image_model` set (a sentence-transformers CLIP model) and a pool that stores images,
retrieval searches a combined table, `<text table>--image-<clip>-w<weight>`: each pair's text
vector joined with the mean CLIP vector of its images by `combine_views`, so one inner product is
`(1-w) cos_text + w cos_image` between two image pairs. A text-only pair keeps its text vector
(zero-padded), so the similarity of two text-only pairs is exactly their text cosine. Without an
image model, or on a pool without images, retrieval reads the text table as before.

Rows are keyed by pair_id and a hash of the text vector and image hashes, so a re-run encodes
only pairs that are new or whose text vector changed (their attributes did).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import polars as pl
import xxhash

from pipeline.clean_images import clip_image_embeddings, combine_views
from pipeline.embed import (
    embeddings_schema,
    embeddings_table,
    existing_keys,
    model_slug,
    read_vectors,
    vector_table,
)
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig


def combined_table(cfg: EmbedConfig, view: str) -> str:
    """The workspace table of a view's text+image vectors under this image model and weight."""
    if not cfg.image_model:
        raise ValueError("combined_table needs embed.image_model")
    weight = f"{cfg.image_weight:.3f}".rstrip("0").rstrip(".")
    return f"{embeddings_table(cfg.model, view)}--image-{model_slug(cfg.image_model)}-w{weight}"


def pair_image_shas(ws: Workspace, pair_ids: Iterable[str]) -> dict[str, list[str]]:
    """pair_id -> the sha256 of every stored image of its conversation, in order (pool pairs only)."""
    if not ws.has_table("pool"):
        return {}
    pool = (ws.scan("pool").select("pair_id", "conversation")
            .filter(pl.col("pair_id").is_in(list(set(pair_ids)))).collect())
    return {pid: [i["sha256"] for m in conversation for i in (m.get("images") or []) if i["sha256"]]
            for pid, conversation in pool.iter_rows()}


@functools.cache
def _clip(name: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name)


def uses_images(ws: Workspace, cfg: EmbedConfig) -> bool:
    """Whether retrieval may need the combined text+image view: an image model is set and the
    workspace holds images."""
    return bool(cfg.image_model) and ws.has_table("images") and bool(ws.row_count("images"))


def retrieval_table(ws: Workspace, cfg: EmbedConfig, view: str, pair_ids: Iterable[str],
                    *, clip_model: Any = None) -> str:
    """The table retrieval indexes and searches for `pair_ids` (their text vectors must exist).

    The text table itself when no image model is set or none of the pairs has an image; otherwise
    the combined table, with every missing row of `pair_ids` added.
    """
    text = embeddings_table(cfg.model, view)
    if not uses_images(ws, cfg):
        return text
    ids = list(dict.fromkeys(pair_ids))
    shas = pair_image_shas(ws, ids)
    if not any(shas.values()):
        return text
    table = combined_table(cfg, view)
    text_ids, text_vectors = read_vectors(ws, text, ids)
    keys = [_row_key(vector, shas.get(pid, []), cfg)
            for pid, vector in zip(text_ids, text_vectors, strict=True)]
    done = existing_keys(ws, table)
    todo = [i for i, (pid, key) in enumerate(zip(text_ids, keys, strict=True)) if (pid, key) not in done]
    if todo:
        model = clip_model if clip_model is not None else _clip(cfg.image_model)
        needed = [s for i in todo for s in shas.get(text_ids[i], [])]
        # one image fixes the width of the image view when this batch holds only text pairs
        probe = needed or [next(s for v in shas.values() for s in v)]
        image = _mean_image_vectors([shas.get(text_ids[i], []) for i in todo],
                                    clip_image_embeddings(ws, probe, model))
        vectors = combine_views(text_vectors[todo], image, image_weight=cfg.image_weight)
        schema = embeddings_schema(vectors.shape[1], f"{cfg.model}+{cfg.image_model}", view)
        rows = [(text_ids[i], keys[i], "") for i in todo]
        ws.append(table, vector_table(rows, vectors, schema), unique_key=["pair_id", "text_hash"])
    return table


def load_retrieval_vectors(ws: Workspace, cfg: EmbedConfig, view: str, pair_ids: Iterable[str],
                           *, clip_model: Any = None) -> tuple[list[str], np.ndarray]:
    """The retrieval vectors of `pair_ids` (text, or text+image; see `retrieval_table`)."""
    ids = list(dict.fromkeys(pair_ids))
    return read_vectors(ws, retrieval_table(ws, cfg, view, ids, clip_model=clip_model), ids)


def _mean_image_vectors(per_pair: Sequence[list[str]], vectors: dict[str, np.ndarray]) -> np.ndarray:
    dim = len(next(iter(vectors.values())))
    out = np.zeros((len(per_pair), dim), dtype=np.float32)
    for row, shas in enumerate(per_pair):
        if shas:
            out[row] = np.mean([vectors[s] for s in shas], axis=0)
    return out


def _row_key(text_vector: np.ndarray, shas: list[str], cfg: EmbedConfig) -> str:
    """Changes when the pair's text vector, its images or the image weight change."""
    digest = xxhash.xxh3_64()
    digest.update(np.ascontiguousarray(text_vector, dtype=np.float32).tobytes())
    digest.update(("|".join(shas) + f"|{cfg.image_weight!r}").encode())
    return digest.hexdigest()
