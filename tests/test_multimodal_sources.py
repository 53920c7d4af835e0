"""Image-text formats: LLaVA, image/question (RLAIF-V shape, `datasets` Image()), VL-RewardBench."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
from PIL import Image

from pipeline.images import image_table, read_image_bytes
from pipeline.ingest import ingest_source
from pipeline.sources import SourceSpec, load_pairs
from pipeline.store import Workspace
from schemas.config.sources import ImagesConfig
from schemas.pair import PairRecord


def make_images(folder: Path) -> dict[str, Path]:
    """A valid PNG and JPEG, a corrupt PNG, a truncated JPEG and an oversized PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("red.png", "blue.jpg", "corrupt.png", "cut.jpg", "huge.png")}
    Image.new("RGB", (20, 10), "red").save(paths["red.png"])
    Image.new("RGB", (24, 24), "blue").save(paths["blue.jpg"], quality=90)
    paths["corrupt.png"].write_bytes(paths["red.png"].read_bytes()[:16] + b"\0" * 80)
    paths["cut.jpg"].write_bytes(paths["blue.jpg"].read_bytes()[:300])
    Image.new("RGB", (400, 400), "white").save(paths["huge.png"])
    return paths


LIMITS = ImagesConfig(max_pixels=100_000)  # huge.png (160,000 pixels) is over it


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def quarantined(ws: Workspace) -> list[tuple[str, int, str, str]]:
    rows = sorted(ws.read("quarantine").to_pylist(), key=lambda r: r["row"])
    return [(Path(r["source_file"]).name, r["row"], r["field"], r["reason"]) for r in rows]


def llava_row(images: list[str], text: str) -> dict:
    return {"conversations": [{"from": "human", "value": "<image>\n" * len(images) + text}],
            "images": images, "chosen": {"from": "gpt", "value": "A red box."},
            "rejected": {"from": "gpt", "value": "A cat."}}


def test_llava_rows_ingest_and_bad_images_are_quarantined(tmp_path: Path) -> None:
    make_images(tmp_path / "img")
    src = write_jsonl(tmp_path / "llava.jsonl", [
        llava_row(["img/red.png"], "What is shown?"),
        llava_row(["img/red.png", "img/blue.jpg"], "Compare the two."),
        llava_row(["img/corrupt.png"], "Bad one"),
        llava_row(["img/red.png", "img/cut.jpg"], "Second is cut"),
        llava_row(["img/nowhere.png"], "Missing"),
        llava_row(["img/huge.png"], "Too big"),
    ])
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, SourceSpec(str(src), images=LIMITS))
    assert (stats.format, stats.added, stats.quarantined) == ("llava", 2, 4)
    got = [(row, field, reason.split(":")[0]) for _, row, field, reason in quarantined(ws)]
    assert got == [(3, "images[0]", "not a readable image"), (4, "images[1]", "not a readable image"),
                   (5, "images[0]", "image file not found"), (6, "images[0]", "oversized image")]
    pairs = [PairRecord.from_row(r) for r in ws.read("pool").to_pylist()]
    two = next(p for p in pairs if "Compare" in p.conversation[0].content)
    assert two.conversation[0].content == "Compare the two."  # the markers became image refs
    assert [i.format for i in two.conversation[0].images] == ["PNG", "JPEG"]
    # red.png is used by both pairs and stored once
    assert image_table(ws).num_rows == 2
    assert ingest_source(ws, SourceSpec(str(src), images=LIMITS)).added == 0
    assert image_table(ws).num_rows == 2


def test_llava_more_markers_than_images_is_a_row_error(tmp_path: Path) -> None:
    make_images(tmp_path / "img")
    row = llava_row(["img/red.png"], "x")
    row["conversations"][0]["value"] = "<image><image> two?"
    loaded = load_pairs(str(write_jsonl(tmp_path / "l.jsonl", [row, llava_row(["img/red.png"], "ok")])))
    assert loaded.pairs.num_rows == 1
    assert loaded.quarantine["reason"][0].as_py() == "2 <image> markers but 1 image(s)"


def image_question_dataset(paths: dict[str, Path]) -> datasets.Dataset:
    """RLAIF-V / MM-RLHF columns with an Image() feature, as the hub ships them."""
    corrupt = {"bytes": paths["corrupt.png"].read_bytes(), "path": None}
    rows = {"image": [str(paths["red.png"]), str(paths["blue.jpg"]), str(paths["red.png"]), corrupt],
            "question": ["What colour?", "What colour is this?", "How many boxes?", "Broken?"],
            "chosen": ["Red.", "Blue.", "One.", "a"], "rejected": ["Green.", "Red.", "Three.", "b"],
            "origin_dataset": ["synthetic"] * 4}
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
                                  "origin_dataset": datasets.Value("string")})
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.mark.parametrize("container", ["parquet", "save_to_disk"])
def test_image_question_from_datasets_image_features(tmp_path: Path, container: str) -> None:
    paths = make_images(tmp_path / "img")
    ds = image_question_dataset(paths)
    if container == "parquet":
        target = tmp_path / "rlaif.parquet"
        ds.to_parquet(str(target))
    else:
        target = tmp_path / "rlaif_disk"
        ds.save_to_disk(str(target))
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, SourceSpec(str(target)))
    assert (stats.format, stats.added, stats.quarantined) == ("image-question", 3, 1)
    bad = ws.read("quarantine").to_pylist()[0]
    assert (bad["row"], bad["field"]) == (4, "image") and "not a readable image" in bad["reason"]
    assert "<96 bytes>" in bad["raw"]  # the raw text tags image bytes instead of dumping them
    pairs = [PairRecord.from_row(r) for r in ws.read("pool").to_pylist()]
    assert all(len(p.conversation[0].images) == 1 for p in pairs)
    assert pairs[0].meta["origin_dataset"] == "synthetic"
    blue = next(p for p in pairs if p.chosen == "Blue.").conversation[0].images[0]
    # the original JPEG bytes are kept, not a re-encoding
    assert read_image_bytes(ws, blue.sha256) == paths["blue.jpg"].read_bytes()
    assert image_table(ws).num_rows == 2


def test_image_question_jsonl_quarantines_each_bad_image(tmp_path: Path) -> None:
    make_images(tmp_path / "img")
    names = ["red.png", "corrupt.png", "cut.jpg", "gone.png", "huge.png", "blue.jpg"]
    rows = [{"image": f"img/{n}", "question": f"Q{i}?", "chosen": "Yes.", "rejected": "No."}
            for i, n in enumerate(names)]
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, SourceSpec(str(write_jsonl(tmp_path / "mm.jsonl", rows)), images=LIMITS))
    assert (stats.format, stats.added, stats.quarantined) == ("image-question", 2, 4)
    assert [(f, row, field) for f, row, field, _ in quarantined(ws)] == [
        ("mm.jsonl", row, "image") for row in (2, 3, 4, 5)]


def test_vl_rewardbench_ranking_becomes_best_vs_each_worse(tmp_path: Path) -> None:
    make_images(tmp_path / "img")
    rows = [
        {"id": "a", "query": "What colour is the box?", "image_path": "img/red.png",
         "response": ["It is blue.", "It is red.", "A dog."], "human_ranking": [1, 0, 2]},
        {"id": "b", "query": "Describe it.", "image_path": "img/blue.jpg",
         "response": ["Blue square.", "Blue box."], "human_ranking": [0, 0]},  # a tie: no pair
        {"id": "c", "query": "Broken?", "image_path": "img/cut.jpg",
         "response": ["x", "y"], "human_ranking": [0, 1]},
    ]
    src = tmp_path / "vlrb.json"
    src.write_text(json.dumps(rows))
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, SourceSpec(str(src)))
    assert (stats.format, stats.added, stats.dropped, stats.quarantined) == ("vl-rewardbench", 2, 1, 1)
    pairs = sorted((PairRecord.from_row(r) for r in ws.read("pool").to_pylist()), key=lambda p: p.source_id)
    assert [(p.chosen, p.rejected, p.label_source.value) for p in pairs] == [
        ("It is red.", "It is blue.", "human"), ("It is red.", "A dog.", "human")]
    assert [p.source_id for p in pairs] == ["vlrb.json:1#0", "vlrb.json:1#1"]
    assert ws.read("dropped")["reason"].to_pylist() == ["tie"]
    assert quarantined(ws)[0][1:3] == (3, "image_path")
    assert ingest_source(ws, SourceSpec(str(src))).added == 0


def test_openai_content_parts_with_data_urls_are_detected_and_stored(tmp_path: Path) -> None:
    import base64

    buf = io.BytesIO()
    Image.new("RGB", (5, 5), "purple").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    row = {"prompt": [{"role": "user", "content": [{"type": "text", "text": "Colour?"},
                                                   {"type": "image_url", "image_url": {"url": url}}]}],
           "chosen": "Purple.", "rejected": "Orange."}
    loaded = load_pairs(str(write_jsonl(tmp_path / "oa.jsonl", [row])))
    assert loaded.format == "prompt-chosen-rejected"
    ref = loaded.pairs["conversation"][0].as_py()[0]["images"][0]
    assert (ref["width"], ref["format"]) == (5, "PNG") and not ref["uri"].startswith("data:")
    assert set(loaded.images) == {ref["sha256"]}


def test_text_formats_still_detect_as_before(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "image": None}])
    assert load_pairs(str(src)).format == "prompt-chosen-rejected"  # a null image column is no image


def test_rows_with_an_empty_images_column_are_text_pairs(tmp_path: Path) -> None:
    """Mixed datasets give their text rows `images: []`: same ids as the text format, no quarantine."""
    make_images(tmp_path / "img")
    text = {"conversations": [{"from": "human", "value": "Say hi."}], "images": [],
            "chosen": {"from": "gpt", "value": "Hi!"}, "rejected": {"from": "gpt", "value": "No."}}
    src = write_jsonl(tmp_path / "mixed.jsonl", [text, llava_row(["img/red.png"], "What is shown?")])
    loaded = load_pairs(str(src))
    assert (loaded.format, loaded.pairs.num_rows, loaded.quarantine.num_rows) == ("llava", 2, 0)
    plain = {k: v for k, v in text.items() if k != "images"}
    same = load_pairs(str(write_jsonl(tmp_path / "plain.jsonl", [plain])))
    assert same.format == "sharegpt"
    assert loaded.pairs["pair_id"][0].as_py() == same.pairs["pair_id"][0].as_py()
