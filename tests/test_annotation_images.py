"""Annotators see the image: multimodal records carry Argilla ImageFields (data URLs) beside the
conversation and the judges' suggestion; the real Argilla UI in headless Chromium displays them."""

from __future__ import annotations

import hashlib
import io
import shutil
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from annotation.push import push_payloads
from annotation.records import build_payloads, image_fields_needed
from annotation.settings import (
    FIELD_CONVERSATION,
    MAX_IMAGE_FIELDS,
    QUESTION_PREFERENCE,
    build_settings,
    dataset_image_fields,
)
from pipeline.judges.llm import ImageUnavailable, image_data_url
from schemas.labels import Judgment, Verdict
from schemas.pair import ImageRef, Message, PairRecord
from tests.annotation_helpers import open_in_annotation_mode, server_records
from tests.fixtures.argilla_server import ArgillaServer

CHROMIUM = "/usr/bin/chromium"
UI_TIMEOUT_MS = 60_000
WIDTH, HEIGHT = 160, 96


def drawing(path: Path, colour: str) -> ImageRef:
    """A PNG with countable shapes, saved to `path`, referenced by path and sha256."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    for i in range(3):
        draw.ellipse((10 + 50 * i, 30, 40 + 50 * i, 60), fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return ImageRef(uri=str(path), sha256=hashlib.sha256(buf.getvalue()).hexdigest())


def pairs_with_images(tmp_path: Path) -> list[PairRecord]:
    red, blue = drawing(tmp_path / "red.png", "red"), drawing(tmp_path / "blue.png", "blue")
    return [
        PairRecord(conversation=(Message(role="user", content="How many circles are there?",
                                         images=(red,)),),
                   chosen="There are three red circles.", rejected="There are two circles.", source="tests"),
        PairRecord(conversation=(Message(role="user", content="Compare the two pictures.",
                                         images=(red, blue)),),
                   chosen="Both show three circles; the first red, the second blue.",
                   rejected="They are identical.", source="tests"),
        PairRecord(conversation=(Message(role="user", content="Hi!"),), chosen="Hello! How can I help?",
                   rejected="What.", source="tests"),
    ]


def resolve(ref: ImageRef) -> str | None:
    """What the flows hand annotation: the image's bytes as a data URL, or None if unreadable."""
    try:
        return image_data_url(ref)
    except ImageUnavailable:
        return None


def votes(pairs: list[PairRecord]) -> list[Judgment]:
    return [Judgment(pair_id=p.pair_id, judge="vlm", model="test/tiny-vlm", verdict=Verdict.chosen,
                     margin=0.4) for p in pairs]


def test_payloads_put_images_in_image_fields(tmp_path: Path) -> None:
    pairs = pairs_with_images(tmp_path)
    assert image_fields_needed(pairs) == 2 and image_fields_needed(pairs[2:]) == 0
    payloads = {p.id: p for p in build_payloads(pairs, {}, votes(pairs), image_fields=2,
                                                   resolve_image=resolve)}
    one, two, text = (payloads[p.pair_id] for p in pairs)
    assert set(one.fields) >= {"image_1"} and "image_2" not in one.fields
    assert two.fields["image_1"].startswith("data:image/png;base64,")
    assert two.fields["image_1"] != two.fields["image_2"]
    assert "**[Image 1, shown above]**" in one.fields[FIELD_CONVERSATION][0]["content"]
    assert not any(k.startswith("image_") for k in text.fields)
    assert one.suggestions[0]["question_name"] == QUESTION_PREFERENCE
    # A dataset without image fields keeps the old link; an unreadable image is left out, not sent broken.
    plain = build_payloads(pairs[:1], {}, ())[0]
    assert "![image](" in plain.fields[FIELD_CONVERSATION][0]["content"] and "image_1" not in plain.fields
    gone = PairRecord(conversation=(Message(role="user", content="Colour?",
                                            images=(ImageRef(uri=str(tmp_path / "gone.png")),)),),
                      chosen="Red.", rejected="Blue.", source="tests")
    assert "image_1" not in build_payloads([gone], {}, (), image_fields=1, resolve_image=resolve)[0].fields
    with pytest.raises(ValueError, match="image_fields"):
        build_settings(None, image_fields=MAX_IMAGE_FIELDS + 1)  # type: ignore[arg-type]


@pytest.mark.argilla
@pytest.mark.browser
def test_annotator_sees_the_image_in_the_argilla_ui(argilla_server: ArgillaServer, tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium missing: run scripts/setup-test-services.sh", pytrace=False)
    import argilla as rg
    from playwright.sync_api import sync_playwright

    pairs = pairs_with_images(tmp_path)[:1]
    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.owner.api_key)
    name = f"images-{uuid.uuid4().hex[:8]}"
    fields = image_fields_needed(pairs)
    settings = build_settings(client, overlap=1, image_fields=fields)
    dataset = rg.Dataset(name=name, workspace=argilla_server.workspace, settings=settings,
                         client=client).create()
    assert dataset_image_fields(dataset) == fields == 1
    stats = push_payloads(client, dataset, build_payloads(pairs, {}, votes(pairs), image_fields=fields,
                                                                     resolve_image=resolve))
    assert stats.created == 1
    record = server_records(argilla_server, dataset.id)[0]
    assert record["fields"]["image_1"].startswith("data:image/png;base64,")
    assert [s["value"] for s in record["suggestions"]]  # the judges' vote travels with the image
    field_types = {f["name"]: f["settings"]["type"] for f in httpx.get(
        f"{argilla_server.url}/api/v1/datasets/{dataset.id}/fields",
        headers={"X-Argilla-Api-Key": argilla_server.owner.api_key}, timeout=30).json()["items"]}
    assert field_types["image_1"] == "image"

    annotator = argilla_server.annotators[0]
    shot = tmp_path / "multimodal-record.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_in_annotation_mode(page, argilla_server, annotator, name, dataset.id, UI_TIMEOUT_MS)
            image = page.locator("img[src^='data:image/png']").first
            image.wait_for(state="visible")
            page.wait_for_function(
                "() => [...document.images].some(i => i.src.startsWith('data:image/png') && i.complete"
                " && i.naturalWidth > 0)")
            natural = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            box = image.bounding_box()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot of the multimodal record: {shot}")
    assert natural == [WIDTH, HEIGHT]
    assert box is not None and box["width"] > 0 and box["height"] > 0
    assert shot.stat().st_size > 0
