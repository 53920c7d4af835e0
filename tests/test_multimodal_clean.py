"""Cleaning image-text pairs: exact image keys, phash near-dups, image+question decontamination."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.clean import exact_dedup
from pipeline.clean_images import (
    IMAGE_DECONTAMINATION_STAGE,
    NEAR_DEDUP_STAGE,
    combine_views,
    image_decontaminate,
    image_near_dedup,
)
from pipeline.ingest import ingest_source
from pipeline.pool import active_pool
from pipeline.sources import SourceSpec
from pipeline.store import Workspace


def drawing(seed: int, size: int = 96) -> Image.Image:
    """Random coloured rectangles and ellipses: structure a perceptual hash can see."""
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = rng.randrange(0, size - 20), rng.randrange(0, size - 20)
        w, h = rng.randrange(10, size - x), rng.randrange(10, size - y)
        color = tuple(rng.randrange(256) for _ in range(3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x, y, x + w, y + h], fill=color)
    return im


def images(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    a = drawing(1)
    out = {"a": folder / "a.png", "a_copy": folder / "a_copy.jpg", "b": folder / "b.png"}
    a.save(out["a"])
    a.resize((80, 80)).save(out["a_copy"], quality=85)  # another source's re-encoded copy
    drawing(2).save(out["b"])
    return out


def row(image: str, question: str = "How many shapes are there?", chosen: str = "Six.",
        rejected: str = "Two.") -> dict:
    return {"image": image, "question": question, "chosen": chosen, "rejected": rejected}


def ingest(ws: Workspace, path: Path, rows: list[dict], name: str) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest_source(ws, SourceSpec(str(path), name=name))


def active_ids(ws: Workspace) -> int:
    return active_pool(ws).select("pair_id").collect().height


def test_exact_dedup_keeps_pairs_that_differ_only_by_image(tmp_path: Path) -> None:
    paths = images(tmp_path / "img")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "s1.jsonl", [row("img/a.png"), row("img/b.png")], "s1")
    assert ws.row_count("pool") == 2
    assert exact_dedup(ws).dropped == 0
    # the same bytes under another name are the same pair: caught at ingest as a duplicate
    (tmp_path / "img" / "renamed.png").write_bytes(paths["a"].read_bytes())
    ingest(ws, tmp_path / "s2.jsonl", [row("img/renamed.png")], "s2")
    assert ws.row_count("pool") == 2
    assert ws.read("dropped")["reason"].to_pylist() == ["exact-duplicate"]


def test_phash_near_dedup_drops_reencoded_copies_with_the_same_question(tmp_path: Path) -> None:
    images(tmp_path / "img")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "s1.jsonl", [row("img/a.png"), row("img/b.png")], "s1")
    ingest(ws, tmp_path / "s2.jsonl", [row("img/a_copy.jpg"),
                                       row("img/a_copy.jpg", question="What colour is the largest shape?")],
           "s2")
    assert ws.row_count("pool") == 4
    stats = image_near_dedup(ws, max_distance=6)
    assert (stats.stage, stats.examined, stats.dropped) == (NEAR_DEDUP_STAGE, 4, 1)
    dropped = ws.read("dropped").to_pylist()[0]
    pool = {r["pair_id"]: r for r in ws.read("pool").to_pylist()}
    gone, kept = pool[dropped["pair_id"]], pool[dropped["kept_pair_id"]]
    assert gone["source"] == "s2" and kept["source"] == "s1"  # the earlier ingested pair stays
    assert gone["conversation"][0]["images"][0]["format"] == "JPEG"
    assert json.loads(dropped["detail"])["max_hamming"] <= 6 and dropped["similarity"] > 0.9
    assert active_ids(ws) == 3  # b, and the copy asked another question, stay
    assert image_near_dedup(ws).dropped == 0  # idempotent
    assert image_near_dedup(ws, max_distance=0).dropped == 0


def test_phash_distance_zero_keeps_distinct_drawings(tmp_path: Path) -> None:
    images(tmp_path / "img")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "s.jsonl", [row("img/a.png"), row("img/b.png")], "s")
    assert image_near_dedup(ws, max_distance=20).dropped == 0


def test_decontamination_needs_the_image_and_the_question(tmp_path: Path) -> None:
    images(tmp_path / "img")
    bench = tmp_path / "vlrb.jsonl"
    item = {"query": "How many shapes are there in the picture?", "image_path": "img/a.png",
            "response": ["Six.", "Two."], "human_ranking": [0, 1]}
    bench.write_text(json.dumps(item) + "\n")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "s.jsonl", [
        row("img/a.png", question="How many shapes are there in the picture?"),  # leaked
        row("img/a.png", question="Describe the colours."),                     # same image, other task
        row("img/b.png", question="How many shapes are there in the picture?"),  # same question, other image
        row("img/a_copy.jpg", question="How many shapes are there in the picture?"),  # re-encoded leak
    ], "s")
    stats = image_decontaminate(ws, [str(bench)])
    assert (stats.stage, stats.dropped) == (IMAGE_DECONTAMINATION_STAGE, 1)
    assert stats.detail["benchmark_items"] == 1
    detail = json.loads(ws.read("dropped")["detail"][0].as_py())
    assert detail["item"] == "vlrb.jsonl:1" and detail["hamming"] == 0
    fuzzy = image_decontaminate(ws, [str(bench)], max_distance=6)
    assert fuzzy.dropped == 1  # the re-encoded copy, by phash
    assert active_ids(ws) == 2


def test_combine_views_weights_the_two_cosines() -> None:
    rng = np.random.default_rng(0)
    t, i = rng.normal(size=(2, 8)), rng.normal(size=(2, 5))
    combined = combine_views(t, i, image_weight=0.3)
    tn, im = t / np.linalg.norm(t, axis=1, keepdims=True), i / np.linalg.norm(i, axis=1, keepdims=True)
    expected = 0.7 * tn[0] @ tn[1] + 0.3 * im[0] @ im[1]
    assert np.isclose(combined[0] @ combined[1], expected, atol=1e-6)
    assert np.isclose(np.linalg.norm(combined, axis=1), 1).all()
    text_only = combine_views(t, np.zeros_like(i), image_weight=0.3)
    assert np.isclose(text_only[0] @ text_only[1], tn[0] @ tn[1], atol=1e-6)  # the text cosine, as it was
    assert np.isclose(np.linalg.norm(text_only, axis=1), 1).all()
    mixed = combine_views(t, np.vstack([i[0], np.zeros(5)]), image_weight=0.3)
    assert np.isclose(mixed[0] @ mixed[1], np.sqrt(0.7) * tn[0] @ tn[1], atol=1e-6)



def test_semantic_dedup_leaves_image_pairs_to_the_image_stages(tmp_path: Path) -> None:
    """Same question and responses about two different pictures: the text view cannot tell them apart."""
    from pipeline.semantic_dedup import semantic_dedup
    from schemas.config.embed import EmbedConfig, SemanticDedupConfig

    images(tmp_path / "img")
    ws = Workspace(tmp_path / "ws")
    ingest(ws, tmp_path / "s.jsonl", [row("img/a.png"), row("img/b.png")], "s")
    stats = semantic_dedup(ws, EmbedConfig(backend="openvino"), SemanticDedupConfig(threshold=0.95))
    assert (stats.considered, stats.dropped) == (0, 0)
    assert active_ids(ws) == 2
