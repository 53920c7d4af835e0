"""Image-text preference rows: LLaVA conversations, image/question/chosen/rejected, VL-RewardBench.

Parsers only say where each image is (a path, a data URL, bytes, a `datasets` Image() value or a
PIL image) and which source field named it; `PairBatchBuilder` then validates and pins every
image through `pipeline.images`, quarantining the row when one is missing or unreadable.

- `llava`: `conversations`/`messages` with `<image>` markers plus an `image`/`images` column and
  chosen/rejected (LLaVA-RLHF, LLaMA-Factory multimodal DPO). Each marker takes the next image;
  images without a marker go to the first user turn. Markers are removed from the text.
- `image-question`: `image`/`images`/`image_path` + `question`/`prompt`/`query` + chosen/rejected
  (RLAIF-V, MM-RLHF, binarized VLFeedback), from JSONL, Parquet or `datasets` Image() columns.
- `vl-rewardbench`: `query`, `image`/`image_path`, `response` (a list) and `human_ranking`
  (`human_ranking[i]` is the rank of response i, 0 best): the best response against each worse one.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.sources import sharegpt
from pipeline.sources.records import Candidate, RowError, require, response_text, to_messages, user_turn

LLAVA = "llava"
IMAGE_QUESTION = "image-question"
VL_REWARDBENCH = "vl-rewardbench"
LABEL_SOURCE = "unknown"
VL_REWARDBENCH_LABEL_SOURCE = "human"
IMAGE_COLUMNS = ("images", "image", "image_path")
QUESTION_COLUMNS = ("question", "prompt", "query", "instruction")
_MARKER = re.compile(r"<image>\n?")


def _image_column(record: dict[str, Any]) -> str | None:
    return next((c for c in IMAGE_COLUMNS if record.get(c) is not None), None)


def image_values(record: dict[str, Any]) -> list[tuple[str, Any]]:
    """(source field, value) for every image of the row's image column, in order.

    An empty list (mixed datasets give text rows `images: []`) means a text-only row.
    """
    column = _image_column(record)
    if column is None:
        raise RowError("image", "missing field")
    value = record[column]
    if isinstance(value, list | tuple):
        return [(f"{column}[{k}]", v) for k, v in enumerate(value)]
    if isinstance(value, str) and not value.strip():
        return []
    return [(column, value)]


def image_ref(field: str, value: Any) -> dict[str, Any]:
    """An unresolved image reference, as the builder's resolver reads it."""
    if isinstance(value, str):
        uri = value if not value.startswith("data:") else ""
        return {"uri": uri, "sha256": None, "data": value, "field": field}
    return {"uri": "", "sha256": None, "data": value, "field": field}


def _extras(record: dict[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
    """Provenance columns for `meta`, without image payloads (bytes and PIL images stay out of JSON)."""
    out = {}
    for k, v in record.items():
        if k in used or k in IMAGE_COLUMNS:
            continue
        if isinstance(v, bytes | bytearray) or type(v).__module__.startswith("PIL"):
            continue
        out[k] = v
    return out


# -- llava ------------------------------------------------------------------------------------


def matches_llava(record: dict[str, Any]) -> bool:
    return sharegpt.matches(record) and _image_column(record) is not None


def parse_llava(record: dict[str, Any]) -> Candidate:
    base = sharegpt.parse({k: v for k, v in record.items() if k not in IMAGE_COLUMNS})
    images = [image_ref(f, v) for f, v in image_values(record)]
    key = "conversations" if "conversations" in record else "messages"
    markers = sum(len(_MARKER.findall(m["content"])) for m in base.conversation if m["role"] == "user")
    if markers > len(images):
        raise RowError(key, f"{markers} <image> markers but {len(images)} image(s)")
    queue = list(images)
    conversation = []
    for m in base.conversation:
        n = len(_MARKER.findall(m["content"])) if m["role"] == "user" else 0
        taken, queue = queue[:n], queue[n:]
        content = _MARKER.sub("", m["content"]).strip() if n else m["content"]
        conversation.append({**m, "content": content, "images": [*m.get("images", []), *taken]})
    if queue:  # images without a marker belong to the first user turn
        first = next((i for i, m in enumerate(conversation) if m["role"] == "user"), None)
        if first is None:
            raise RowError(key, "images but no user turn to attach them to")
        m = conversation[first]
        conversation[first] = {**m, "images": [*queue, *m["images"]]}
    return Candidate(conversation, base.chosen, base.rejected, meta=_extras(record, ("conversations",
                     "messages", "chosen", "rejected", "system")))


# -- image-question ----------------------------------------------------------------------------


def matches_image_question(record: dict[str, Any]) -> bool:
    return (
        _image_column(record) is not None
        and any(c in record for c in QUESTION_COLUMNS)
        and "chosen" in record and "rejected" in record
        and "conversations" not in record and "messages" not in record
    )


def parse_image_question(record: dict[str, Any]) -> Candidate:
    column = next(c for c in QUESTION_COLUMNS if c in record)
    question = require(record, column)
    images = [image_ref(f, v) for f, v in image_values(record)]
    if isinstance(question, str):
        conversation = user_turn(_MARKER.sub("", question).strip(), record.get("system"))
        if not conversation[-1]["content"]:
            raise RowError(column, "empty question")
    else:
        conversation = to_messages(question, column)
    first = next((i for i, m in enumerate(conversation) if m["role"] == "user"), None)
    if first is None:
        raise RowError(column, "no user turn")
    m = conversation[first]
    conversation[first] = {**m, "images": [*images, *m.get("images", [])]}
    chosen = response_text(require(record, "chosen"), "chosen")
    rejected = response_text(require(record, "rejected"), "rejected")
    return Candidate(conversation, chosen, rejected,
                     meta=_extras(record, (column, "chosen", "rejected", "system")))


# -- vl-rewardbench ----------------------------------------------------------------------------


def matches_vl_rewardbench(record: dict[str, Any]) -> bool:
    return "query" in record and ("response" in record or "responses" in record) and "human_ranking" in record


def parse_vl_rewardbench(record: dict[str, Any]) -> list[Candidate]:
    query = require(record, "query")
    if not isinstance(query, str) or not query.strip():
        raise RowError("query", "expected a non-empty string")
    key = "response" if "response" in record else "responses"
    responses = require(record, key)
    ranking = require(record, "human_ranking")
    if not isinstance(responses, list) or len(responses) < 2:
        raise RowError(key, "expected a list of at least two responses")
    if not all(isinstance(r, str) for r in responses):
        raise RowError(key, "expected strings")
    if (not isinstance(ranking, list) or len(ranking) != len(responses)
            or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranking)):
        raise RowError("human_ranking", f"expected {len(responses)} integer ranks, got {ranking!r}")
    images = [image_ref(f, v) for f, v in image_values(record)]
    conversation = [{"role": "user", "content": _MARKER.sub("", query).strip(), "images": images}]
    meta = _extras(record, ("query", key, "human_ranking"))
    meta["human_ranking"] = ranking
    best = min(ranking)
    winners = [i for i, r in enumerate(ranking) if r == best]
    losers = [i for i, r in enumerate(ranking) if r > best]
    if not losers:
        return [Candidate(conversation, responses[0], responses[1], meta=meta, drop_reason="tie",
                          drop_detail={"human_ranking": ranking})]
    pairs = [(w, lo) for w in winners for lo in losers]
    return [
        Candidate([dict(m) for m in conversation], responses[w], responses[lo],
                  meta={**meta, "chosen_index": w, "rejected_index": lo},
                  sub="" if len(pairs) == 1 else f"#{k}")
        for k, (w, lo) in enumerate(pairs)
    ]
