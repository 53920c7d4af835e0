"""Images in pairs: Pillow validation, the content-addressed store, pair_id over image hashes."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.images import (
    ImageError,
    ImageResolver,
    data_url,
    image_table,
    open_image,
    read_image_bytes,
    validate_bytes,
)
from pipeline.ingest import ingest_source
from pipeline.sources import SourceSpec, load_pairs
from pipeline.store import Workspace
from schemas.config.sources import ImagesConfig, SourceConfig
from schemas.pair import (
    LEGACY_IMAGE_REF_TYPE,
    POOL_SCHEMA,
    ImageRef,
    Message,
    PairRecord,
    compute_pair_id,
)


def png(color: str = "red", size: tuple[int, int] = (16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(color: str = "blue", size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def openai_row(url: str, question: str = "What colour is it?") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                       {"type": "text", "text": question}]}],
            "chosen": "Red.", "rejected": "Blue."}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_validate_reads_size_and_format() -> None:
    img = validate_bytes(png(size=(16, 12)), ImagesConfig())
    assert (img.width, img.height, img.format) == (16, 12, "PNG")
    assert img.relpath == f"images/{img.sha256[:2]}/{img.sha256}.png"
    assert validate_bytes(jpeg(), ImagesConfig()).relpath.endswith(".jpg")


@pytest.mark.parametrize(("data", "reason"), [
    (png()[:40], "not a readable image"),                       # truncated PNG
    (jpeg()[: len(jpeg()) // 2], "not a readable image"),        # truncated JPEG: fails on load()
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a readable image"),  # corrupt PNG
    (b"", "empty image"),
])
def test_validate_rejects_broken_images(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        validate_bytes(data, ImagesConfig(), "image")


def test_validate_rejects_oversized_images() -> None:
    with pytest.raises(ImageError, match="oversized image: 100x100 pixels"):
        validate_bytes(png(size=(100, 100)), ImagesConfig(max_pixels=5000))
    with pytest.raises(ImageError, match=r"oversized image: .* bytes"):
        validate_bytes(png(), ImagesConfig(max_bytes=10))


def test_resolver_accepts_every_kind_of_value(tmp_path: Path) -> None:
    data = png("green")
    (tmp_path / "g.png").write_bytes(data)
    resolver = ImageResolver(ImagesConfig(), str(tmp_path))
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    shas = set()
    for value in ("g.png", str(tmp_path / "g.png"), url, data, {"bytes": data, "path": "g.png"},
                  {"bytes": None, "path": "g.png"}, Image.open(io.BytesIO(data))):
        uri, img = resolver.load(value, "image")
        assert img is not None and img.format == "PNG"
        shas.add(img.sha256)
    assert len(shas) == 1  # the PIL image re-encodes to the same PNG bytes
    uri, img = resolver.load("https://example.org/cat.png", "image")  # never fetched by default
    assert (uri, img) == ("https://example.org/cat.png", None)


def test_pair_id_covers_images_and_text_only_ids_are_unchanged() -> None:
    text = [{"role": "user", "content": "What colour is the square?", "images": []}]
    # the ids main computed before images were part of them
    assert compute_pair_id(text, "Red.", "Blue.") == "00c7e5352244033e213ea2f0094099d0"
    two = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi  there"}]
    assert compute_pair_id(two, "Hello", "Go away") == "675ade2ccae498b7473143553c648cac"
    a = [{**text[0], "images": [{"uri": "a.png", "sha256": "a" * 64}]}]
    b = [{**text[0], "images": [{"uri": "a.png", "sha256": "b" * 64}]}]
    ids = {compute_pair_id(c, "Red.", "Blue.") for c in (text, a, b)}
    assert len(ids) == 3
    # the uri does not matter once the bytes are pinned
    same = [{**text[0], "images": [{"uri": "elsewhere.png", "sha256": "a" * 64}]}]
    assert compute_pair_id(same, "Red.", "Blue.") == compute_pair_id(a, "Red.", "Blue.")
    msg = Message(role="user", content=text[0]["content"], images=(ImageRef(uri="a.png", sha256="a" * 64),))
    assert PairRecord(conversation=(msg,), chosen="Red.", rejected="Blue.", source="s").pair_id == \
        compute_pair_id(a, "Red.", "Blue.")


def test_three_image_rows_valid_missing_corrupt(tmp_path: Path) -> None:
    """The issue's case: only the valid PNG's pair enters; the others are quarantined by file, row, field."""
    (tmp_path / "ok.png").write_bytes(png())
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    src = write_jsonl(tmp_path / "pairs.jsonl", [openai_row("ok.png", "q1"), openai_row("missing.png", "q2"),
                                                  openai_row("bad.png", "q3")])
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, SourceSpec(str(src)))
    assert (stats.added, stats.quarantined) == (1, 2)
    q = sorted(ws.read("quarantine").to_pylist(), key=lambda r: r["row"])
    assert [(Path(r["source_file"]).name, r["row"], r["field"]) for r in q] == [
        ("pairs.jsonl", 2, "messages[0].content[0]"), ("pairs.jsonl", 3, "messages[0].content[0]")]
    assert "image file not found" in q[0]["reason"] and "missing.png" in q[0]["reason"]
    assert "not a readable image" in q[1]["reason"]
    pair = PairRecord.from_row(ws.read("pool").to_pylist()[0])
    ref = pair.conversation[0].images[0]
    assert (ref.uri, ref.width, ref.height, ref.format) == ("ok.png", 16, 12, "PNG")
    assert read_image_bytes(ws, ref.sha256) == png()
    assert read_image_bytes(ws, ref.sha256, ref.format) == png()
    assert open_image(ws, ref.sha256).size == (16, 12)
    url = data_url(ws, ref.sha256)
    assert url == data_url(ws, ref.sha256, "PNG") and url.startswith("data:image/png;base64,")
    assert ImageResolver(ImagesConfig()).load(url, "x")[1].sha256 == ref.sha256  # round trip
    again = ingest_source(ws, SourceSpec(str(src)))
    assert (again.added, again.already_present) == (0, 1)
    assert image_table(ws).num_rows == 1


def test_shared_image_is_stored_once_and_data_urls_are_not_kept_inline(tmp_path: Path) -> None:
    url = "data:image/png;base64," + base64.b64encode(png("navy")).decode()
    src = write_jsonl(tmp_path / "p.jsonl", [openai_row(url, "first"), openai_row(url, "second")])
    ws = Workspace(tmp_path / "ws")
    assert ingest_source(ws, SourceSpec(str(src))).added == 2
    table = image_table(ws).to_pylist()
    assert len(table) == 1 and table[0]["bytes"] == len(png("navy"))
    files = [p for p in (tmp_path / "ws" / "images").rglob("*.png")]
    assert len(files) == 1
    pool = ws.read("pool").to_pylist()
    uris = {m["images"][0]["uri"] for r in pool for m in r["conversation"]}
    assert uris == {table[0]["path"]}  # the payload is in the store, not in every pool row


def test_limits_come_from_the_source_config(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(png(size=(200, 200)))
    src = write_jsonl(tmp_path / "p.jsonl", [openai_row("big.png")])
    cfg = SourceConfig(path=str(src), images=ImagesConfig(max_pixels=10_000))
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, cfg)
    assert (stats.added, stats.quarantined) == (0, 1)
    assert "oversized image: 200x200 pixels" in ws.read("quarantine")["reason"][0].as_py()
    assert load_pairs(str(src)).pairs.num_rows == 1  # the default limit lets it in


def test_older_pools_read_and_keep_their_schema(tmp_path: Path) -> None:
    """A pool written before width/height/format: rows read with nulls, new shards keep its schema."""
    legacy_msg = pa.struct([("role", pa.string()), ("content", pa.string()),
                            ("images", pa.list_(LEGACY_IMAGE_REF_TYPE))])
    legacy = pa.schema([f if f.name != "conversation" else pa.field("conversation", pa.list_(legacy_msg))
                        for f in POOL_SCHEMA], metadata=POOL_SCHEMA.metadata)
    old = PairRecord(conversation=(Message(role="user", content="old", images=(ImageRef(uri="http://x/a.png"),)),),
                     chosen="a", rejected="b", source="old", ingest_seq=0).to_row()
    for m in old["conversation"]:
        m["images"] = [{"uri": i["uri"], "sha256": i["sha256"]} for i in m["images"]]
    ws = Workspace(tmp_path / "ws")
    ws.append("pool", pa.Table.from_pylist([old], schema=legacy))
    back = PairRecord.from_row(ws.read("pool").to_pylist()[0])
    assert back.conversation[0].images[0] == ImageRef(uri="http://x/a.png")
    (tmp_path / "ok.png").write_bytes(png())
    ingest_source(ws, SourceSpec(str(write_jsonl(tmp_path / "p.jsonl", [openai_row("ok.png")]))))
    frame = ws.scan("pool").collect()  # one schema across shards: polars scans them together
    assert isinstance(frame, pl.DataFrame) and frame.height == 2
