"""CLIP near-duplicate images through sentence-transformers, on a tiny random-init CLIP built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.clean_images import clip_image_embeddings, image_near_dedup, multimodal_pair_vectors
from pipeline.ingest import ingest_source
from pipeline.sources import SourceSpec
from pipeline.store import Workspace
from tests.test_multimodal_clean import images, row

pytest.importorskip("sentence_transformers")


def tiny_clip(folder: Path) -> Path:
    """A 2-layer CLIP (random weights, byte-level vocab) saved as a sentence-transformers model."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor  # no torchvision needed
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor
    hf = folder / "hf"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(chars)})
    processor = CLIPProcessor(
        image_processor=ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**small, "vocab_size": len(vocab), "max_position_embeddings": 77, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(hf)
    processor.save_pretrained(hf)
    st = folder / "st"
    SentenceTransformer(modules=[models.CLIPModel(str(hf))], device="cpu").save(str(st))
    return st


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_clip(tmp_path_factory.mktemp("clip")))


def test_clip_near_dedup_with_a_named_sentence_transformers_model(tmp_path: Path, clip_path: str) -> None:
    images(tmp_path / "img")
    ws = Workspace(tmp_path / "ws")
    rows = [row("img/a.png"), row("img/b.png"), row("img/a_copy.jpg")]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest_source(ws, SourceSpec(str(tmp_path / "s.jsonl")))
    model = clip_path
    pool = ws.read("pool").to_pylist()
    refs = [r["conversation"][0]["images"][0] for r in pool]
    sha = {ref["uri"]: ref["sha256"] for ref in refs}
    vectors = clip_image_embeddings(ws, list(sha.values()), model)
    assert all(np.isclose(np.linalg.norm(v), 1, atol=1e-5) for v in vectors.values())
    copy = float(vectors[sha["img/a.png"]] @ vectors[sha["img/a_copy.jpg"]])
    other = float(vectors[sha["img/a.png"]] @ vectors[sha["img/b.png"]])
    assert copy > other  # even random CLIP weights see a resized re-encode as closer than another drawing
    stats = image_near_dedup(ws, clip_model=model, clip_threshold=(copy + other) / 2)
    assert stats.dropped == 1
    dropped = ws.read("dropped").to_pylist()[0]
    by_id = {r["pair_id"]: r["conversation"][0]["images"][0]["uri"] for r in pool}
    assert by_id[dropped["pair_id"]] == "img/a_copy.jpg" and by_id[dropped["kept_pair_id"]] == "img/a.png"
    assert dropped["reason"] == "near-duplicate image (clip)"
    assert np.isclose(dropped["similarity"], copy, atol=1e-5)
    # retrieval vectors: the text view (here one-hot per pair) joined with the image view
    ids = [r["pair_id"] for r in pool]
    combined = multimodal_pair_vectors(ws, ids, np.eye(len(ids), dtype=np.float32), model, image_weight=0.4)
    assert combined.shape == (3, 3 + 16)
    a, c = by_id_index(pool, "img/a.png"), by_id_index(pool, "img/a_copy.jpg")
    assert np.isclose(combined[a] @ combined[c], 0.4 * copy, atol=1e-5)  # texts orthogonal: image term only


def by_id_index(pool: list[dict], uri: str) -> int:
    return next(i for i, r in enumerate(pool) if r["conversation"][0]["images"][0]["uri"] == uri)


def test_retrieval_with_the_image_view_finds_the_same_picture(tmp_path: Path, clip_path: str) -> None:
    """Text alone finds the pair that asks the same about another picture; with the image view, the
    pair about the same picture (a re-encoded copy) is nearer. Text-only pairs keep the text index."""
    import polars as pl

    from pipeline.embed import embeddings_table, read_vectors
    from pipeline.embed_images import combined_table, retrieval_table
    from pipeline.retrieve import VIEW, retrieve_near_failures
    from schemas.config.embed import EmbedConfig

    images(tmp_path / "img")
    ws = Workspace(tmp_path / "ws")
    question = "How many shapes are there in this drawing?"
    # the same words about another picture; nearly the same words about the same picture
    rows = [row("img/a.png", question), row("img/b.png", question),
            row("img/a_copy.jpg", "How many shapes are there in this picture?")]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest_source(ws, SourceSpec(str(tmp_path / "s.jsonl")))
    by_uri = {r["conversation"][0]["images"][0]["uri"]: r["pair_id"] for r in ws.read("pool").to_pylist()}
    query, other_picture, same_picture = by_uri["img/a.png"], by_uri["img/b.png"], by_uri["img/a_copy.jpg"]
    scores = pl.DataFrame({"pair_id": [query], "p": [0.2]})

    text_cfg = EmbedConfig(backend="openvino")
    text_only = retrieve_near_failures(ws, text_cfg, scores, exclude=[])
    assert text_only["pair_id"][0] == other_picture
    image_cfg = text_cfg.model_copy(update={"image_model": clip_path, "image_weight": 0.9})
    with_image = retrieve_near_failures(ws, image_cfg, scores, exclude=[])
    assert with_image["pair_id"][0] == same_picture
    # the index is built on the combined vectors: text (384) + image (16), of unit length
    ids, vectors = read_vectors(ws, combined_table(image_cfg, VIEW))
    assert sorted(ids) == sorted(by_uri.values()) and vectors.shape == (3, 384 + 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # a second call encodes nothing new
    rows_before = ws.row_count(combined_table(image_cfg, VIEW))
    assert retrieve_near_failures(ws, image_cfg, scores, exclude=[]).equals(with_image)
    assert ws.row_count(combined_table(image_cfg, VIEW)) == rows_before

    # a pool without images: the image model changes nothing, the text table is the index
    text_ws = Workspace(tmp_path / "text")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(
        {"prompt": q, "chosen": "Yes.", "rejected": "No."}) + "\n" for q in ("Is it red?", "Is it blue?")))
    ingest_source(text_ws, SourceSpec(str(tmp_path / "t.jsonl")))
    text_ids = text_ws.read("pool")["pair_id"].to_pylist()
    plain = retrieve_near_failures(text_ws, text_cfg, pl.DataFrame({"pair_id": text_ids[:1], "p": [0.2]}),
                                   exclude=[])
    assert retrieval_table(text_ws, image_cfg, VIEW, text_ids) == embeddings_table(text_cfg.model, VIEW)
    assert retrieve_near_failures(text_ws, image_cfg, pl.DataFrame({"pair_id": text_ids[:1], "p": [0.2]}),
                                  exclude=[]).equals(plain)
