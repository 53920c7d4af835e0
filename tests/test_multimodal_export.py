"""Multimodal export: an `images` column of Image() features that `datasets` decodes; card sources."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from PIL import Image

from pipeline.export import CURATED_SCHEMA, MULTIMODAL_CURATED_SCHEMA, export_curated
from pipeline.ingest import ingest_source
from pipeline.sources import SourceSpec
from pipeline.store import Workspace


def build(tmp_path: Path) -> Workspace:
    img = tmp_path / "img"
    img.mkdir()
    Image.new("RGB", (20, 10), "red").save(img / "red.png")
    Image.new("RGB", (12, 12), "blue").save(img / "blue.jpg")
    rows = [
        {"conversations": [{"from": "human", "value": "<image>\nWhat colour?"}], "images": ["img/red.png"],
         "chosen": {"from": "gpt", "value": "Red."}, "rejected": {"from": "gpt", "value": "Green."}},
        {"conversations": [{"from": "human", "value": "<image>\n<image>\nSame colour?"}],
         "images": ["img/red.png", "img/blue.jpg"],
         "chosen": {"from": "gpt", "value": "No."}, "rejected": {"from": "gpt", "value": "Yes."}},
    ]
    (tmp_path / "llava.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text))
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(tmp_path / "llava.jsonl"), name="mm", license="cc-by-4.0"))
    ingest_source(ws, SourceSpec(str(tmp_path / "text.jsonl"), name="text", license="MIT"))
    return ws


def test_multimodal_export_loads_with_images_decoded(tmp_path: Path) -> None:
    ws = build(tmp_path)
    out = tmp_path / "out"
    pool = pl.from_arrow(ws.read("pool")).sort("ingest_seq")
    selection = pl.DataFrame({"pair_id": pool["pair_id"].to_list(), "flipped": [False, True, False]})
    stats = export_curated(ws, selection, str(out))
    assert stats.rows == 3
    assert stats.counts["image_source"] == {"mm | cc-by-4.0": 2}
    assert stats.counts["image_format"] == {"JPEG": 1, "PNG": 1}
    assert ws.read("curated").schema.remove_metadata().equals(MULTIMODAL_CURATED_SCHEMA.remove_metadata())
    card = (out / "README.md").read_text()
    assert "## Images" in card and "| mm | cc-by-4.0 | 2 |" in card
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    import datasets

    files, cache = str(out / "data" / "*.parquet"), str(tmp_path / "hf")
    for ds in (datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache),
               datasets.Dataset.from_parquet(files, cache_dir=cache)):
        assert isinstance(ds.features["images"], datasets.List)
        assert isinstance(ds.features["images"].feature, datasets.Image)
        rows = {r["prompt"][0]["content"][-1]["text"]: r for r in ds}
        one, two, text = rows["What colour?"], rows["Same colour?"], rows["Say hi."]
        assert [im.size for im in one["images"]] == [(20, 10)]
        assert one["images"][0].getpixel((0, 0)) == (255, 0, 0)
        assert [(im.format, im.size) for im in two["images"]] == [("PNG", (20, 10)), ("JPEG", (12, 12))]
        assert [p["type"] for p in two["prompt"][0]["content"]] == ["image", "image", "text"]
        # TRL's vision format: the assistant turns are part lists too; flipped pairs swap
        assert two["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]
        assert text["images"] == [] and text["prompt"][0]["content"] == [{"type": "text", "text": "Say hi."}]


def test_text_only_export_is_unchanged(tmp_path: Path) -> None:
    """No images column and the text schema, with nothing of the multimodal path in the file."""
    row = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(tmp_path / "t.jsonl"), name="text", license="MIT"))
    stats = export_curated(ws, None, str(tmp_path / "out"))
    assert "image_source" not in stats.counts
    assert ws.read("curated").schema.equals(CURATED_SCHEMA)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Images" not in card
    schema = pq.read_schema(tmp_path / "out" / "data" / "train-00000-of-00001.parquet")
    assert schema.names == CURATED_SCHEMA.names and schema.metadata == CURATED_SCHEMA.metadata
    assert schema.field("prompt").type.value_type == CURATED_SCHEMA.field("prompt").type.value_type
