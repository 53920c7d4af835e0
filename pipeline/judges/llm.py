"""What every LLM judge shares: building the Candidate 1/2 requests and reading verdicts back.

Backends (the vLLM offline engine, OpenAI-compatible servers) only turn chat messages into
answers: the sampled text plus the log-probabilities of the labels "1" and "2".
A pair whose conversation carries images sends them with the request (a VLM judge): the images
come first in the user turn and the text marks where each was attached ("[Image 1]"), so both
orders of a pair share the same image prefix; the worked examples' images come before the pair's
own (pipeline.judges.prompts numbers them). Image bytes come from the workspace's image store
when the judge has a workspace and the reference a sha256, else from the reference's own uri (a
local path or a data URL): `load_image_bytes` is the one place that decides.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import urllib.parse
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.attributes import PreferenceAttributes
from schemas.labels import CandidateOrder, Judgment
from schemas.pair import ImageRef, PairRecord

from .base import (
    Judge,
    JudgeError,
    LabeledExample,
    candidate_orders,
    label_from_margin,
    margin_from_label_logprobs,
    verdict_from_label,
)
from .prompts import example_image_plan, pairwise_prompt, parse_label, usable_examples

if TYPE_CHECKING:
    from PIL import Image

    from pipeline.store import Workspace


MAX_IMAGES = 8
"""Images sent per request (the pair's first ones); the rest are marked in the text only."""


class ImageUnavailable(ValueError):
    """An image a judge or an annotation view needs whose bytes cannot be loaded."""


_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp",
         "BMP": "image/bmp", "TIFF": "image/tiff", "MPO": "image/jpeg"}


def load_image_bytes(ref: ImageRef, workspace: Workspace | None = None) -> bytes:
    """The encoded bytes of an image: from the workspace store by sha256, else from its uri.

    A uri may be a data URL, a file:// URL or a local path; an http(s) image that was never
    fetched has no bytes here. Bytes read from a uri must match the reference's sha256.
    """
    if workspace is not None and ref.sha256:
        try:
            from pipeline.images import read_image_bytes

            return read_image_bytes(workspace, ref.sha256, getattr(ref, "format", None))
        except (ImportError, KeyError, FileNotFoundError, OSError):
            pass  # not in the store: fall back to the uri
    uri = ref.uri
    if uri.startswith("data:"):
        header, _, payload = uri.partition(",")
        try:
            data = base64.b64decode(payload, validate=True) if ";base64" in header else \
                urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise ImageUnavailable(f"image data URL does not decode: {exc}") from exc
    elif uri.startswith(("http://", "https://")):
        raise ImageUnavailable(f"image {uri} was not fetched into the workspace")
    else:
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path) if uri.startswith("file:") else uri)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageUnavailable(f"image {uri}: {exc.strerror or exc}") from exc
    if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ImageUnavailable(f"image {uri[:80]}: bytes do not match sha256 {ref.sha256}")
    return data


def image_mime(data: bytes) -> str:
    """The image's MIME type, read from its bytes (what a data URL must declare)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return _MIME.get(im.format or "", "image/png")


def image_data_url(ref: ImageRef, workspace: Workspace | None = None) -> str:
    """The image as a base64 data URL (what OpenAI-compatible servers and Argilla accept)."""
    if ref.uri.startswith("data:") and not ref.sha256:
        return ref.uri
    data = load_image_bytes(ref, workspace)
    return f"data:{image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def load_pil_image(ref: ImageRef, workspace: Workspace | None = None) -> Image.Image:
    """The image decoded, in RGB (what vLLM's multimodal processors take)."""
    from PIL import Image

    with Image.open(io.BytesIO(load_image_bytes(ref, workspace))) as im:
        return im.convert("RGB")


def pair_images(pair: PairRecord, limit: int = MAX_IMAGES) -> tuple[ImageRef, ...]:
    """The images of the pair's conversation, in order, at most `limit`."""
    return tuple(image for message in pair.conversation for image in message.images)[:limit]


@dataclass(frozen=True)
class LabelRequest:
    pair_id: str
    order: CandidateOrder
    prompt: str
    images: tuple[ImageRef, ...] = ()
    """Sent before the prompt text, in this order (the text's "[Image k]" markers)."""


@dataclass(frozen=True)
class LabelAnswer:
    """One sample: the generated text and the logprobs of "1" and "2" (None when not returned).
    `error`: no answer was made (the text says why); its verdict is invalid, whatever the text."""

    text: str
    lp1: float | None = None
    lp2: float | None = None
    error: bool = False


class PartialAnswers(Exception):
    """Raised by a backend that failed part-way: answers made so far, by request index."""

    def __init__(self, answers: dict[int, list[LabelAnswer]], cause: BaseException) -> None:
        super().__init__(str(cause))
        self.answers = answers
        self.cause = cause


class PromptJudge(Judge):
    """An LLM judge: one prompt per (pair, order), `samples` answers each."""

    def __init__(self, name: str, model: str, *, temperature: float = 0.0,
                 workspace: Workspace | None = None, max_images: int = MAX_IMAGES, **kwargs: Any) -> None:
        super().__init__(name, model, **kwargs)
        self.temperature = temperature
        self.workspace = workspace
        """Where stored image bytes are read from (None: from each image's uri)."""
        self.max_images = max_images

    def build_requests(
        self,
        pairs: list[PairRecord],
        attributes: dict[str, PreferenceAttributes],
        examples: dict[str, list[LabeledExample]],
        seed: int,
    ) -> list[LabelRequest]:
        """Both orders of a pair sit next to each other, so one batch shares their prefix.

        A pair judged with images gets its worked examples' images too (as many as fit in
        `max_images` after its own), before its own, so the examples' labels can be checked
        against what they show.
        """
        out = []
        loadable: dict[tuple[str, str | None], bool] = {}

        def available(ref: ImageRef) -> bool:
            key = (ref.uri, ref.sha256)
            if key not in loadable:
                try:
                    load_image_bytes(ref, self.workspace)
                    loadable[key] = True
                except ImageUnavailable:
                    loadable[key] = ref.uri.startswith(("http://", "https://"))  # the server fetches it
            return loadable[key]

        for pair in pairs:
            shots = examples.get(pair.pair_id, [])[: self.max_examples]
            plan = example_image_plan(pair, shots, self.max_images, available)
            shown = [ex for ex, sent in zip(usable_examples(shots), plan, strict=True) if sent]
            images = tuple(i for ex in shown for m in ex.pair.conversation for i in m.images)
            images += pair_images(pair, self.max_images)
            for order in candidate_orders(pair.pair_id, both=self.both_orders, seed=seed, judge=self.name):
                out.append(LabelRequest(pair.pair_id, order, self.render(pair, order, attributes.get(
                    pair.pair_id), shots, plan), images))
        return out

    def render(self, pair: PairRecord, order: CandidateOrder, attributes: PreferenceAttributes | None,
               shots: list[LabeledExample], example_images: list[bool] | None = None) -> str:
        return pairwise_prompt(pair, order, attributes=attributes, examples=shots,
                               example_images=example_images)

    @abstractmethod
    def answer(self, requests: list[LabelRequest], seed: int) -> list[list[LabelAnswer]]:
        """`samples` answers per request, in request order; may raise PartialAnswers."""

    def judge(
        self,
        pairs: list[PairRecord],
        *,
        attributes: dict[str, PreferenceAttributes],
        examples: dict[str, list[LabeledExample]],
        round: int,
        seed: int = 0,
    ) -> list[Judgment]:
        requests = self.build_requests(pairs, attributes, examples, seed)
        try:
            answers = self.answer(requests, seed)
        except PartialAnswers as exc:
            done = [self.to_judgments(requests[i], a, round) for i, a in sorted(exc.answers.items())]
            # Only pairs whose every order finished are handed back, so a stored pair is complete.
            per_pair: dict[str, int] = {}
            for r in requests:
                per_pair[r.pair_id] = per_pair.get(r.pair_id, 0) + 1
            finished: dict[str, int] = {}
            for i in exc.answers:
                finished[requests[i].pair_id] = finished.get(requests[i].pair_id, 0) + 1
            complete = {p for p, n in finished.items() if n == per_pair[p]}
            partial = [j for group in done for j in group if j.pair_id in complete]
            raise JudgeError(f"judge {self.name!r} ({self.model}): {exc.cause}", partial) from exc.cause
        return [j for r, a in zip(requests, answers, strict=True) for j in self.to_judgments(r, a, round)]

    def to_judgments(self, request: LabelRequest, answers: list[LabelAnswer], round: int) -> list[Judgment]:
        out = []
        for sample, ans in enumerate(answers):
            margin = margin_from_label_logprobs(ans.lp1, ans.lp2, request.order)
            # An error's text (a path, a status code) may hold a standalone 1 or 2: never a label.
            text_label = None if ans.error else parse_label(ans.text)
            if margin is not None and (self.temperature == 0 or text_label is None):
                first = margin if request.order == CandidateOrder.chosen_first else -margin
                label: str | None = label_from_margin(first)
            else:
                label = text_label
            out.append(Judgment(
                pair_id=request.pair_id, judge=self.name, model=self.model, sample=sample,
                order=request.order, verdict=verdict_from_label(label, request.order),
                margin=margin, raw_text=ans.text, round=round,
            ))
        return out
