"""Cleaning image-text pairs: near-duplicate images and image+question decontamination.

Exact image duplicates need no stage of their own: images are keyed by sha256, which pair_id and
the exact-dedup key cover. What sha256 misses is the same picture re-encoded, resized or lightly
cropped by another source. `image_near_dedup` catches those with a perceptual hash
(imagehash.phash, Hamming distance) or, given a sentence-transformers CLIP model, with image
embeddings (cosine). Only pairs with the same question text (and, by default, the same
responses) are compared, so two different questions about one picture both stay.

`image_decontaminate` drops a pair whose image is a benchmark image (sha256, or phash within a
distance) and whose question matches that benchmark item's by the 13-gram rule (a shorter question
must appear whole). Both stages record every removed pair in `dropped` and are idempotent.

`combine_views` is the retrieval embedding of a multimodal pair: text and image views joined so
that one dot product is a weighted sum of the two cosines (pipeline.embed_images stores them
for retrieval).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from PIL import Image

from pipeline import ngrams
from pipeline.clean import BATCH_ROWS, CleanStats, _active_batches, squash
from pipeline.images import ImageResolver, open_image
from pipeline.store import Workspace
from schemas.config.sources import ImagesConfig
from schemas.pair import DROPPED_SCHEMA

NEAR_DEDUP_STAGE = "image-near-dedup"
IMAGE_DECONTAMINATION_STAGE = "image-decontamination"
HASH_BITS = 64


def phash(image: Any) -> int:
    """The 64-bit perceptual hash of a PIL image, as an int (Hamming distance = popcount of xor)."""
    import imagehash

    return int(str(imagehash.phash(image)), 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def image_phashes(ws: Workspace, shas: Sequence[str]) -> dict[str, int]:
    """phash of every stored image named (each decoded once)."""
    return {sha: phash(open_image(ws, sha)) for sha in dict.fromkeys(shas)}


def clip_image_embeddings(ws: Workspace, shas: Sequence[str], model: Any, *,
                          batch_size: int = 32) -> dict[str, np.ndarray]:
    """L2-normalized CLIP image embeddings; `model` is a SentenceTransformer or the name of one."""
    if isinstance(model, str):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(model)
    unique = list(dict.fromkeys(shas))
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        vectors = model.encode([open_image(ws, s).convert("RGB") for s in chunk], batch_size=batch_size,
                               convert_to_numpy=True, normalize_embeddings=True)
        out.update(zip(chunk, np.asarray(vectors, dtype=np.float32), strict=True))
    return out


def combine_views(text: np.ndarray, image: np.ndarray | None, *, image_weight: float = 0.5) -> np.ndarray:
    """Retrieval vectors of multimodal pairs: [sqrt(1-w) * text, sqrt(w) * image], both L2-normalized.

    The dot product of two combined vectors is (1-w) * text cosine + w * image cosine, so a
    FAISS inner-product index over them ranks by both views at once. A pair without an image
    (None, or a zero row) keeps its whole text vector, zero-padded: two such pairs score exactly
    their text cosine, and every row stays of unit length. Rows of `text` and `image` align.
    """
    text = _unit(np.atleast_2d(np.asarray(text, dtype=np.float32)))
    if image is None:
        image = np.zeros((text.shape[0], 0), dtype=np.float32)
    image = _unit(np.atleast_2d(np.asarray(image, dtype=np.float32)))
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"{text.shape[0]} text vectors but {image.shape[0]} image vectors")
    w = float(image_weight)
    has_image = (np.abs(image).sum(axis=1, keepdims=True) > 0) if image.shape[1] else \
        np.zeros((text.shape[0], 1), dtype=bool)
    text_scale = np.where(has_image, np.sqrt(1 - w), 1.0).astype(np.float32)
    return np.hstack([text_scale * text, np.sqrt(w) * image]).astype(np.float32)


def multimodal_pair_vectors(ws: Workspace, pair_ids: Sequence[str], text: np.ndarray, clip_model: Any, *,
                            image_weight: float = 0.5) -> np.ndarray:
    """Retrieval vectors of pairs from their text vectors (rows aligned with `pair_ids`, e.g. from
    pipeline.embed.load_embeddings) and the mean CLIP vector of each pair's stored images.

    Pairs without a stored image keep only their text view (see `combine_views`).
    """
    ids = list(pair_ids)
    shas_of: dict[str, list[str]] = {}
    if ws.has_table("pool"):
        pool = (ws.scan("pool").select("pair_id", "conversation")
                .filter(pl.col("pair_id").is_in(ids)).collect())
        for pid, conversation in pool.iter_rows():
            shas_of[pid] = [i["sha256"] for m in conversation for i in (m.get("images") or []) if i["sha256"]]
    vectors = clip_image_embeddings(ws, [s for v in shas_of.values() for s in v], clip_model)
    dim = len(next(iter(vectors.values()))) if vectors else 0
    image = np.zeros((len(ids), dim), dtype=np.float32)
    for row, pid in enumerate(ids):
        mine = [vectors[s] for s in shas_of.get(pid, [])]
        if mine:
            image[row] = np.mean(mine, axis=0)
    return combine_views(text, image, image_weight=image_weight)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@dataclass
class _Row:
    pair_id: str
    images: tuple[str, ...]
    human: bool
    seq: int

    def rank(self) -> tuple[bool, int, str]:
        return (not self.human, self.seq if self.seq >= 0 else 2**62, self.pair_id)


def _image_rows(ws: Workspace, batch_rows: int, with_responses: bool,
                progress: Callable[[int, int], None] | None) -> Iterator[tuple[pl.DataFrame, list[str]]]:
    """Active pairs with pinned images, batch by batch, with their comparison key."""
    columns = ["pair_id", "conversation", "chosen", "rejected", "ingest_seq", "label_source"]
    for batch in _active_batches(ws, columns, batch_rows, progress):
        flat = (batch.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"), "conversation")
                .explode("conversation").unnest("conversation"))
        text = flat.with_columns(t=flat["role"] + "\x1f" + squash(flat["content"]))
        keys = text.group_by("row", maintain_order=True).agg(pl.col("t").str.join("\x1e")).sort("row")["t"]
        if with_responses:
            keys = keys + "\x1d" + squash(batch["chosen"]) + "\x1d" + squash(batch["rejected"])
        shas = flat.select("row", pl.col("images").list.eval(pl.element().struct.field("sha256")
                                                               .drop_nulls())).explode("images")
        shas = shas.drop_nulls().group_by("row", maintain_order=True).agg("images")
        rows = batch.with_row_index("row").join(shas, on="row", how="inner").sort("row")
        yield rows, [keys[int(r)] for r in rows["row"].to_list()]


def image_near_dedup(
    ws: Workspace, *, max_distance: int = 6, clip_model: Any = None, clip_threshold: float = 0.95,
    match_responses: bool = True, batch_rows: int = BATCH_ROWS,
    progress: Callable[[int, int], None] | None = None,
) -> CleanStats:
    """Drop pairs whose images nearly repeat a better-ranked pair's, with the same question text.

    Without `clip_model`: images match when every position's phash distance is <= max_distance.
    With it (a SentenceTransformer or a name): when every position's CLIP cosine is >= clip_threshold.
    The kept pair of a group is the human-labelled, earliest ingested one (as semantic dedup).
    """
    stats = CleanStats(NEAR_DEDUP_STAGE)
    start, cpu = time.perf_counter(), time.process_time()
    groups: dict[str, list[_Row]] = {}
    for rows, keys in _image_rows(ws, batch_rows, match_responses, progress):
        stats.examined += rows.height
        for key, (pid, images, label, seq) in zip(keys, rows.select(
                "pair_id", "images", "label_source", "ingest_seq").iter_rows(), strict=True):
            groups.setdefault(key, []).append(_Row(pid, tuple(images), label == "human", int(seq)))
    candidates = [sorted(g, key=_Row.rank) for g in groups.values() if len(g) > 1]
    shas = [s for g in candidates for r in g for s in r.images]
    method = "phash" if clip_model is None else "clip"
    stats.detail["groups_compared"] = len(candidates)
    if method == "phash":
        hashes = image_phashes(ws, shas)

        def similarity(a: _Row, b: _Row) -> float | None:
            worst = max(hamming(hashes[x], hashes[y]) for x, y in zip(a.images, b.images, strict=True))
            return 1 - worst / HASH_BITS if worst <= max_distance else None
    else:
        vectors = clip_image_embeddings(ws, shas, clip_model)

        def similarity(a: _Row, b: _Row) -> float | None:
            worst = min(float(vectors[x] @ vectors[y]) for x, y in zip(a.images, b.images, strict=True))
            return worst if worst >= clip_threshold else None

    records = []
    for group in candidates:
        kept: list[_Row] = []
        for row in group:
            best: tuple[float, _Row] | None = None
            for k in kept:
                if len(k.images) != len(row.images):
                    continue
                sim = similarity(k, row)
                if sim is not None and (best is None or sim > best[0]):
                    best = (sim, k)
            if best is None:
                kept.append(row)
                continue
            detail = {"method": method, "images": list(row.images), "kept_images": list(best[1].images)}
            if method == "phash":
                detail["max_hamming"] = round((1 - best[0]) * HASH_BITS)
            records.append({"pair_id": row.pair_id, "stage": NEAR_DEDUP_STAGE,
                            "reason": f"near-duplicate image ({method})", "kept_pair_id": best[1].pair_id,
                            "similarity": float(best[0]), "detail": json.dumps(detail, sort_keys=True)})
    stats.dropped = _record(ws, records)
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu
    return stats


# -- decontamination ----------------------------------------------------------------------------


@dataclass
class BenchmarkImages:
    """Benchmark items with images: (file, item id, question words) and the images naming them."""

    items: list[tuple[str, str, list[str]]]
    by_sha: dict[str, list[int]]
    hashes: list[tuple[int, int]]
    """(phash, item) of every benchmark image, for matches that survive a re-encoding."""
    unreadable: int = 0


def build_benchmark_images(paths: Sequence[str], *, limits: ImagesConfig | None = None) -> BenchmarkImages:
    """Read each benchmark with the source formats; every item's first user turn and its images."""
    from pipeline.images import ImageError
    from pipeline.sources.detect import FORMATS, SAMPLE_ROWS, detect_format
    from pipeline.sources.files import expand_paths, is_saved_dataset, iter_records, iter_saved_records
    from pipeline.sources.records import RowError

    bench = BenchmarkImages([], {}, [])
    for path in paths:
        files = [(path, path)] if is_saved_dataset(path) else expand_paths(str(path))
        for file, label in files:
            records = iter_saved_records(file, None) if is_saved_dataset(file) else iter_records(file)
            head = list(itertools.islice(records, SAMPLE_ROWS))
            parse = FORMATS[detect_format(head, file)].parse
            resolver = ImageResolver(limits or ImagesConfig(), os.path.dirname(os.path.abspath(file)), file)
            for rec in itertools.chain(head, records):
                if rec.record is None:
                    continue
                try:
                    parsed = parse(rec.record)
                    cand = parsed[0] if isinstance(parsed, list) else parsed
                    conversation, loaded = resolver.resolve(cand.conversation)
                except (RowError, ImageError, IndexError):
                    bench.unreadable += 1
                    continue
                user = next((m for m in conversation if m["role"] == "user"), None)
                if user is None or not loaded:
                    continue
                item = len(bench.items)
                bench.items.append((str(path), f"{label}:{rec.row}", ngrams.words(user["content"])))
                for img in loaded:
                    bench.by_sha.setdefault(img.sha256, []).append(item)
                    with Image.open(io.BytesIO(img.data)) as im:
                        bench.hashes.append((phash(im), item))
    return bench


def _shares_window(a: list[str], b: list[str], n: int) -> str | None:
    """The first n-word window (n shrunk to the shorter text) of `a` that occurs in `b`."""
    size = min(n, len(a), len(b))
    if size == 0:
        return None
    windows = set(ngrams.window_words(b, size))
    return next((" ".join(w) for w in ngrams.window_words(a, size) if w in windows), None)


def image_decontaminate(
    ws: Workspace, benchmark_paths: Sequence[str], n: int = 13, *, max_distance: int = 0,
    index: BenchmarkImages | None = None, batch_rows: int = BATCH_ROWS,
    progress: Callable[[int, int], None] | None = None,
) -> CleanStats:
    """Drop pairs that show a benchmark's image and ask its question (n-gram rule on the question).

    An image matches by sha256, or with `max_distance` > 0 also by phash within that distance.
    """
    stats = CleanStats(IMAGE_DECONTAMINATION_STAGE)
    start, cpu = time.perf_counter(), time.process_time()
    bench = index or build_benchmark_images(benchmark_paths)
    stats.detail.update(benchmark_items=len(bench.items), benchmark_unreadable=bench.unreadable)
    records = []
    for rows, _ in _image_rows(ws, batch_rows, False, progress):
        stats.examined += rows.height
        for pid, images, conversation in rows.select("pair_id", "images", "conversation").iter_rows():
            words = ngrams.words(next((m["content"] for m in conversation if m["role"] == "user"), ""))
            hit = _match(ws, bench, images, words, n, max_distance)
            if hit is not None:
                records.append({"pair_id": pid, "stage": IMAGE_DECONTAMINATION_STAGE,
                                "reason": "benchmark-image-overlap", "kept_pair_id": "", "similarity": None,
                                "detail": json.dumps(hit, ensure_ascii=False, sort_keys=True)})
    stats.dropped = _record(ws, records)
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu
    return stats


def _match(ws: Workspace, bench: BenchmarkImages, images: list[str], words: list[str], n: int,
           max_distance: int) -> dict[str, Any] | None:
    for sha in images:
        items = {i: 0 for i in bench.by_sha.get(sha, [])}
        if max_distance > 0 and bench.hashes:
            h = phash(open_image(ws, sha))
            for bh, item in bench.hashes:
                d = hamming(h, bh)
                if d <= max_distance and d < items.get(item, HASH_BITS + 1):
                    items[item] = d
        for item, distance in items.items():
            bench_file, item_id, bench_words = bench.items[item]
            shared = _shares_window(words, bench_words, n)
            if shared is not None:
                return {"benchmark": bench_file, "item": item_id, "image": sha, "hamming": distance,
                        "ngram": shared}
    return None


def _record(ws: Workspace, records: list[dict[str, Any]]) -> int:
    table = pa.Table.from_pydict({k: [r[k] for r in records] for k in DROPPED_SCHEMA.names},
                                 schema=DROPPED_SCHEMA)
    return ws.append("dropped", table, unique_key="pair_id", schema=DROPPED_SCHEMA) if records else 0
