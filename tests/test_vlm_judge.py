"""VLM judges without an engine: image prompts, image loading, and the exact request body the
OpenAI-compatible judge sends, captured by a real local HTTP server that answers like one."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.judges.llm import ImageUnavailable, image_data_url, load_image_bytes, pair_images
from pipeline.judges.openai_compat import OpenAIJudge
from pipeline.judges.prompts import attributes_prompt, guideline_for, image_task, pairwise_prompt
from schemas.attributes import PreferenceAttributes
from schemas.labels import CandidateOrder, Verdict
from schemas.pair import ImageRef, Message, PairRecord, render_conversation
from tests.fixtures.judge_pairs import make_pair


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def image_pair(question: str, refs: list[ImageRef], chosen: str = "It is red.",
               rejected: str = "It is blue.") -> PairRecord:
    return PairRecord(conversation=(Message(role="user", content=question, images=tuple(refs)),),
                      chosen=chosen, rejected=rejected, source="tests")


def file_ref(path: Path, data: bytes) -> ImageRef:
    path.write_bytes(data)
    return ImageRef(uri=str(path), sha256=hashlib.sha256(data).hexdigest())


def test_image_prompts_mark_each_image_and_add_the_image_protocol(tmp_path: Path) -> None:
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
    pair = PairRecord(conversation=(
        Message(role="user", content="Compare the bar chart in these two images.",
                images=(file_ref(tmp_path / "a.png", red), file_ref(tmp_path / "b.png", blue))),
        Message(role="assistant", content="Which bars?"),
        Message(role="user", content="The tallest ones."),
    ), chosen="Image 1's tallest bar is higher.", rejected="They are the same.", source="tests")
    prompt = pairwise_prompt(pair, CandidateOrder.chosen_first)
    assert "User: [Image 1]\n[Image 2]\nCompare the bar chart" in prompt
    assert "hallucination" in prompt and "legend" in prompt  # image protocol + chart/diagram rules
    assert len(pair_images(pair)) == 2 and len(pair_images(pair, limit=1)) == 1
    assert image_task(pair) == "chart-diagram"
    assert image_task(image_pair("Transcribe the text in the image.", [])) is None  # no images
    ocr = image_pair("What does the sign say? Transcribe it.", [file_ref(tmp_path / "c.png", red)])
    assert image_task(ocr) == "ocr"
    attrs = PreferenceAttributes(task_category="factual-qa", objectivity="objective", controversiality="low",
                                 desired_attributes=["reads the sign"], guideline="Check the sign.")
    assert "character by character" in guideline_for(attrs, image_task(ocr))
    assert "you cannot see" in attributes_prompt(ocr, ("factual-qa",))
    # Text-only pairs keep the prompt they had: the same conversation rendering, no image text.
    text = make_pair("What is 2 + 2?", "4", "5")
    assert render_conversation(text.conversation) in pairwise_prompt(text, CandidateOrder.chosen_first)
    assert "Image" not in pairwise_prompt(text, CandidateOrder.chosen_first)
    assert "you cannot see" not in attributes_prompt(text, ("math",))


def test_image_bytes_come_from_paths_and_data_urls_and_are_checked(tmp_path: Path) -> None:
    data = png_bytes((10, 200, 10))
    ref = file_ref(tmp_path / "g.png", data)
    assert load_image_bytes(ref) == data
    assert load_image_bytes(ImageRef(uri=(tmp_path / "g.png").as_uri())) == data
    url = image_data_url(ref)
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == data
    assert load_image_bytes(ImageRef(uri=url)) == data
    with pytest.raises(ImageUnavailable, match="do not match sha256"):
        load_image_bytes(ImageRef(uri=str(tmp_path / "g.png"), sha256="0" * 64))
    with pytest.raises(ImageUnavailable, match="No such file"):
        load_image_bytes(ImageRef(uri=str(tmp_path / "missing.png")))
    with pytest.raises(ImageUnavailable, match="not fetched"):
        load_image_bytes(ImageRef(uri="https://example.org/cat.png"))


class Recorder:
    """A real HTTP server on 127.0.0.1 that records each chat request and answers "1"."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    recorder.bodies.append(body)
                top = [{"token": "1", "logprob": -0.1, "bytes": None},
                       {"token": "2", "logprob": -2.4, "bytes": None}]
                answer = {
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": i, "finish_reason": "length",
                                 "message": {"role": "assistant", "content": "1"},
                                 "logprobs": {"content": [{"token": "1", "logprob": -0.1, "bytes": None,
                                                           "top_logprobs": top}]}}
                                for i in range(body.get("n", 1))],
                }
                raw = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    thread = threading.Thread(target=rec.server.serve_forever, daemon=True)
    thread.start()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()
    thread.join()


def test_openai_judge_sends_images_as_data_url_parts_in_both_orders(recorder: Recorder,
                                                                     tmp_path: Path) -> None:
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255), (20, 20))
    refs = [file_ref(tmp_path / "r.png", red), file_ref(tmp_path / "b.png", blue)]
    two = image_pair("Which image is red?", refs, chosen="Image 1.", rejected="Image 2.")
    remote = image_pair("Describe the image.", [ImageRef(uri="https://example.org/cat.png")],
                        chosen="A cat on a sofa.", rejected="A dog.")
    missing = image_pair("What colour?", [ImageRef(uri=str(tmp_path / "gone.png"))])
    text = make_pair("What is 2 + 2?", "4", "5")
    judge = OpenAIJudge("vlm", "tiny-vlm", endpoints=[recorder.url], concurrency=2)
    made = judge.judge([two, remote, missing, text], attributes={}, examples={}, round=1)

    bodies = recorder.bodies
    assert len(bodies) == 6  # both orders of every pair but the one whose image is gone
    image_bodies = [b for b in bodies if isinstance(b["messages"][0]["content"], list)]
    assert len(image_bodies) == 4
    for body in image_bodies:
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
        parts = body["messages"][0]["content"]
        assert [p["type"] for p in parts[:-1]] == ["image_url"] * (len(parts) - 1)
        assert parts[-1]["type"] == "text" and "[Image 1]" in parts[-1]["text"]
    two_parts = [b["messages"][0]["content"] for b in image_bodies if len(b["messages"][0]["content"]) == 3]
    assert len(two_parts) == 2  # the two-image pair, once per order, images in conversation order
    for parts in two_parts:
        sent = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts[:2]]
        assert sent == [red, blue]
        assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts[:2])
    texts = sorted(p[-1]["text"] for p in two_parts)
    assert texts[0] != texts[1] and all("[Candidate 1]" in t for t in texts)
    urls = [b["messages"][0]["content"][0]["image_url"]["url"] for b in image_bodies]
    assert urls.count("https://example.org/cat.png") == 2  # never fetched: the server loads it
    assert [b["messages"][0]["content"] for b in bodies if isinstance(b["messages"][0]["content"], str)]

    # The server always says "1": the verdict follows the order shown, votes per order.
    by_pair: dict[str, dict[CandidateOrder, Verdict]] = {}
    for j in made:
        by_pair.setdefault(j.pair_id, {})[j.order] = j.verdict
    for pair in (two, remote, text):
        assert by_pair[pair.pair_id] == {CandidateOrder.chosen_first: Verdict.chosen,
                                         CandidateOrder.rejected_first: Verdict.rejected}
    assert set(by_pair[missing.pair_id].values()) == {Verdict.invalid}
    assert all("gone.png" in j.raw_text for j in made if j.pair_id == missing.pair_id)


def test_a_failed_request_is_invalid_even_when_its_error_names_a_1_or_a_2(recorder: Recorder,
                                                                        tmp_path: Path) -> None:
    # The error text names the path; "run 1" holds a standalone 1, which the text fallback of the
    # label parser would read as a vote for the first candidate.
    folder = tmp_path / "run 1"
    missing = image_pair("What colour?", [ImageRef(uri=str(folder / "2.png"))])
    judge = OpenAIJudge("vlm", "tiny-vlm", endpoints=[recorder.url], concurrency=2)
    made = judge.judge([missing], attributes={}, examples={}, round=1)
    assert not recorder.bodies  # nothing was sent
    assert len(made) == 2 and {j.verdict for j in made} == {Verdict.invalid}
    assert all("run 1" in j.raw_text and j.raw_text.startswith("[error]") for j in made)


def test_images_load_from_the_workspace_store_by_sha256(recorder: Recorder, tmp_path: Path) -> None:
    from annotation.records import build_payloads
    from pipeline.images import store_images, validate_bytes
    from pipeline.store import Workspace
    from schemas.config.sources import ImagesConfig

    data = png_bytes((250, 200, 0), (24, 16))
    ws = Workspace(tmp_path / "ws")
    stored = validate_bytes(data, ImagesConfig())
    store_images(ws, [stored], source="tests")
    # The uri is provenance only (the source file is gone): the bytes come from the store.
    ref = ImageRef(uri="photos/yellow.png", sha256=stored.sha256, width=24, height=16, format="PNG")
    assert load_image_bytes(ref, ws) == data
    with pytest.raises(ImageUnavailable):
        load_image_bytes(ref)
    pair = image_pair("What colour is it?", [ref], chosen="Yellow.", rejected="Purple.")
    judge = OpenAIJudge("vlm", "tiny-vlm", endpoints=[recorder.url], workspace=ws)
    made = judge.judge([pair], attributes={}, examples={}, round=1)
    assert {j.verdict for j in made} == {Verdict.chosen, Verdict.rejected}
    urls = [b["messages"][0]["content"][0]["image_url"]["url"] for b in recorder.bodies]
    assert [base64.b64decode(u.split(",", 1)[1]) for u in urls] == [data, data]
    from pipeline.judges.llm import image_data_url

    payload = build_payloads([pair], {}, (), image_fields=1, resolve_image=lambda r: image_data_url(r, ws))[0]
    assert base64.b64decode(payload.fields["image_1"].split(",", 1)[1]) == data


def test_worked_examples_carry_their_images_before_the_judged_pair(recorder: Recorder,
                                                                     tmp_path: Path) -> None:
    from pipeline.judges.base import LabeledExample

    red, green = png_bytes((255, 0, 0)), png_bytes((0, 255, 0), (16, 16))
    target = image_pair("What colour is the square?", [file_ref(tmp_path / "t.png", red)])
    shown = image_pair("What colour is the circle?", [file_ref(tmp_path / "e.png", green)],
                       chosen="Green.", rejected="Red.")
    gone = image_pair("What colour is the line?", [ImageRef(uri=str(tmp_path / "gone.png"))])
    text_shot = make_pair("What is 2 + 2?", "4", "5")
    shots = [LabeledExample(shown, Verdict.chosen), LabeledExample(gone, Verdict.rejected),
             LabeledExample(text_shot, Verdict.chosen)]
    text_target = make_pair("What is 3 + 3?", "6", "7")
    judge = OpenAIJudge("vlm", "tiny-vlm", endpoints=[recorder.url], concurrency=1)
    made = judge.judge([target, text_target], attributes={},
                       examples={target.pair_id: shots, text_target.pair_id: shots}, round=1)
    assert {j.verdict for j in made if j.pair_id == target.pair_id} == {Verdict.chosen, Verdict.rejected}

    image_bodies = [b for b in recorder.bodies if isinstance(b["messages"][0]["content"], list)]
    assert len(image_bodies) == 2  # both orders of the image pair
    for body in image_bodies:
        parts = body["messages"][0]["content"]
        # the same image_url parts as the judged pair's own: the example's image first, then the pair's
        assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
        sent = [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in parts[:2]]
        assert sent == [green, red]
        text = parts[-1]["text"]
        assert "## Example 1" in text and "User: [Image 1]\nWhat colour is the circle?" in text
        assert "User: [an image, not shown]\nWhat colour is the line?" in text  # its file is gone
        assert "# Pair to judge" in text and "User: [Image 2]\nWhat colour is the square?" in text
        assert "The worked examples' images come first" in text
    # a text-only pair stays a text request, its image examples shown as text
    text_bodies = [b["messages"][0]["content"] for b in recorder.bodies
                   if isinstance(b["messages"][0]["content"], str)]
    assert len(text_bodies) == 2 and all("[an image, not shown]" in t for t in text_bodies)
    assert all("Image 1" not in t for t in text_bodies)

    # the image budget: the pair's own images first, an example only with all of its images
    small = OpenAIJudge("vlm", "tiny-vlm", endpoints=[recorder.url], max_images=1)
    request = small.build_requests([target], {}, {target.pair_id: shots}, seed=0)[0]
    assert [r.uri for r in request.images] == [str(tmp_path / "t.png")]
    assert "User: [Image 1]\nWhat colour is the square?" in request.prompt
