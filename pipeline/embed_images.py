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
import pyarrow as pa
import xxhash

from pipeline.clean_images import clip_image_embeddings, combine_views
from pipeline.embed import (
    embeddings_schema,
    embeddings_table,
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
    return {pid: conversation_images(conversation) for pid, conversation in pool.iter_rows()}


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
    add_combined(ws, cfg, view, ids, shas, clip_model=clip_model)
    return combined_table(cfg, view)


def add_combined(ws: Workspace, cfg: EmbedConfig, view: str, pair_ids: Sequence[str],
                 shas: dict[str, list[str]] | None = None, *, clip_model: Any = None) -> int:
    """Append the combined rows `pair_ids` lack (their text vectors must exist), whether or not
    they hold images; the rows added. Text vectors and keys are read filtered as scanned."""
    from pipeline.embed_stage import partition_keys
    from pipeline.retrieve_stage import partition_vectors

    table = combined_table(cfg, view)
    ids = list(dict.fromkeys(pair_ids))
    shas = shas if shas is not None else pair_image_shas(ws, ids)
    text_ids, text_vectors = partition_vectors(ws, embeddings_table(cfg.model, view),
                                               pl.Series("pair_id", ids, pl.String), None)
    rows = combined_rows(ws, cfg, view, text_ids, text_vectors, shas, partition_keys(ws, table, text_ids),
                         clip_model=clip_model)
    return 0 if rows is None else ws.append(table, rows, unique_key=["pair_id", "text_hash"])


def combined_rows(ws: Workspace, cfg: EmbedConfig, view: str, text_ids: list[str], text_vectors: np.ndarray,
                  shas: dict[str, list[str]], done: set[tuple[str, str]], *,
                  clip_model: Any = None) -> pa.Table | None:
    """Rows of the combined table for the pairs of `text_ids` (with their text vectors and image
    hashes) whose (pair_id, key) is not in `done`; None when every one is there."""
    keys = [_row_key(vector, shas.get(pid, []), cfg)
            for pid, vector in zip(text_ids, text_vectors, strict=True)]
    todo = [i for i, (pid, key) in enumerate(zip(text_ids, keys, strict=True)) if (pid, key) not in done]
    if not todo:
        return None
    model = clip_model if clip_model is not None else _clip(cfg.image_model)
    needed = [s for i in todo for s in shas.get(text_ids[i], [])]
    # one image fixes the width of the image view when these pairs have none
    probe = needed or [first_image(ws, shas)]
    image = _mean_image_vectors([shas.get(text_ids[i], []) for i in todo],
                                clip_image_embeddings(ws, probe, model))
    vectors = combine_views(text_vectors[todo], image, image_weight=cfg.image_weight)
    schema = embeddings_schema(vectors.shape[1], f"{cfg.model}+{cfg.image_model}", view)
    return vector_table([(text_ids[i], keys[i], "") for i in todo], vectors, schema)


def first_image(ws: Workspace, shas: dict[str, list[str]]) -> str:
    """An image of these pairs, or else the first the workspace stores."""
    held = next((s for v in shas.values() for s in v), None)
    if held is not None:
        return held
    return str(ws.scan("images").select("sha256").head(1).collect().item())


def conversation_images(conversation: Sequence[dict[str, Any]]) -> list[str]:
    """The sha256 of every stored image of a conversation, in order."""
    return [i["sha256"] for m in conversation for i in (m.get("images") or []) if i["sha256"]]


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
