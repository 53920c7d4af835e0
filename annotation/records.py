"""Pairs -> what an Argilla record holds (fields, metadata, suggestions), and verdicts back.

Pure functions on the schema types, so the mapping between the stored pair and what the
annotator saw is testable without a server: Candidate 1 is the stored chosen response when the
order is `chosen_first`, the stored rejected one otherwise.
Pairs with images, in a dataset with image fields: each of the pair's first images goes into its
ImageField as a data URL (resolved by the caller, which reads the workspace's image store; an
http(s) image never fetched as its URL), and the conversation marks where each was attached.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from annotation.settings import (
    FIELD_ATTRIBUTES,
    FIELD_CANDIDATE_1,
    FIELD_CANDIDATE_2,
    FIELD_CONVERSATION,
    LABEL_CANDIDATE_1,
    LABEL_CANDIDATE_2,
    LABEL_CANNOT_DECIDE,
    MAX_IMAGE_FIELDS,
    META_CONTROVERSIALITY,
    META_OBJECTIVITY,
    META_ORDER,
    META_PRIORITY,
    META_ROUND,
    META_SOURCE,
    META_TASK_CATEGORY,
    NO_ATTRIBUTES_PRIORITY,
    QUESTION_OBJECTIVITY,
    QUESTION_PREFERENCE,
    UNKNOWN,
    candidate_order,
    image_field_name,
    image_fields_for,
)
from schemas.attributes import TASK_CATEGORIES, PreferenceAttributes
from schemas.labels import CandidateOrder, Judgment, Verdict
from schemas.pair import ImageRef, PairRecord

ImageResolver = Callable[[ImageRef], str | None]
"""ImageRef -> what an ImageField shows (a data URL), or None when its bytes cannot be read.
The flows pass one that reads the workspace's image store; annotation never reads images itself."""

AGENT_MAX_CHARS = 200
ATTRIBUTES_AGENT = "synpref-attributes"
CHAT_ROLES = {"user", "assistant", "system"}
_AGENT_UNSAFE = re.compile(r"[^A-Za-z0-9\-_:./]")
"""Characters Argilla refuses in a suggestion agent (models are joined with spaces)."""


@dataclass(frozen=True)
class RecordPayload:
    """One Argilla record as plain data: `id` is the pair_id (Argilla's external id)."""

    id: str
    fields: dict[str, Any]
    metadata: dict[str, Any]
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    order: CandidateOrder = CandidateOrder.chosen_first
    priority: int = NO_ATTRIBUTES_PRIORITY


def record_id_for(pair_id: str) -> str:
    """Argilla's external record id for a pair: the pair_id itself (stable, so pushes upsert)."""
    return pair_id


def pair_priority(attributes: PreferenceAttributes | None) -> int:
    """Objective + low controversy first (0); pairs without attributes last."""
    return attributes.priority() if attributes is not None else NO_ATTRIBUTES_PRIORITY


def label_for_verdict(verdict: Verdict, order: CandidateOrder) -> str | None:
    """The preference label an annotator would pick for a verdict on the stored pair."""
    if verdict == Verdict.tie:
        return LABEL_CANNOT_DECIDE
    if verdict not in (Verdict.chosen, Verdict.rejected):
        return None
    chosen_label = LABEL_CANDIDATE_1 if order == CandidateOrder.chosen_first else LABEL_CANDIDATE_2
    other = LABEL_CANDIDATE_2 if chosen_label == LABEL_CANDIDATE_1 else LABEL_CANDIDATE_1
    return chosen_label if verdict == Verdict.chosen else other


def verdict_for_label(label: str, order: CandidateOrder) -> Verdict:
    """The inverse of label_for_verdict: a shown label back to a verdict on the stored pair."""
    if label == LABEL_CANNOT_DECIDE:
        return Verdict.tie
    if label not in (LABEL_CANDIDATE_1, LABEL_CANDIDATE_2):
        raise ValueError(f"unknown preference label {label!r}")
    first_is_chosen = order == CandidateOrder.chosen_first
    picked_first = label == LABEL_CANDIDATE_1
    return Verdict.chosen if picked_first == first_is_chosen else Verdict.rejected


def _chat(pair: PairRecord, shown: int = 0) -> list[dict[str, str]]:
    """The conversation; the first `shown` images are in image fields, later ones stay links."""
    turns = []
    k = 0
    for message in pair.conversation:
        role = message.role.value if message.role.value in CHAT_ROLES else "user"
        content = message.content
        if message.role.value not in CHAT_ROLES:
            content = f"[{message.role.value}]\n{content}"
        for image in message.images:
            k += 1
            content += (f"\n\n**[Image {k}, shown above]**" if k <= shown
                        else f"\n\n![image]({image.uri})")
        turns.append({"role": role, "content": content or " "})
    return turns


def images_of(pair: PairRecord) -> list[ImageRef]:
    return [image for message in pair.conversation for image in message.images]


def image_fields_needed(pairs: Iterable[PairRecord]) -> int:
    """Image fields a dataset for these pairs needs (0 for a text-only batch)."""
    return image_fields_for(len(images_of(p)) for p in pairs)


def image_value(image: ImageRef, resolve: ImageResolver | None = None) -> str | None:
    """What an ImageField shows: the resolver's data URL, else a data: or http(s) uri as it is
    (an http(s) image is never fetched here), else None (unreadable)."""
    shown = resolve(image) if resolve is not None else None
    if shown is not None:
        return shown
    return image.uri if image.uri.startswith(("data:", "http://", "https://")) else None


def attributes_markdown(attributes: PreferenceAttributes | None) -> str:
    if attributes is None:
        return "_No attributes were generated for this pair; decide from the guidelines._"
    wanted = "\n".join(f"- {a}" for a in attributes.desired_attributes)
    return (
        f"**Task category:** {attributes.task_category}  \n"
        f"**Objectivity:** {attributes.objectivity.value}  \n"
        f"**Controversiality:** {attributes.controversiality.value}\n\n"
        f"**A good response has:**\n{wanted}\n\n"
        f"**Guideline for this pair:** {attributes.guideline}"
    )


def judge_suggestion(judgments: Sequence[Judgment], order: CandidateOrder) -> dict[str, Any] | None:
    """The judges' majority as one suggestion: score = the share of valid votes behind it.

    Argilla holds one suggestion per question, so several judges become one vote whose agent
    names every judge model that voted.
    """
    labels = [label_for_verdict(j.verdict, order) for j in judgments]
    votes = [(label, j) for label, j in zip(labels, judgments, strict=True) if label is not None]
    if not votes:
        return None
    counts = Counter(label for label, _ in votes)
    ranked = counts.most_common()
    top = LABEL_CANNOT_DECIDE if len(ranked) > 1 and ranked[0][1] == ranked[1][1] else ranked[0][0]
    models = sorted({_AGENT_UNSAFE.sub("-", j.model or j.judge) for _, j in votes})
    agent = " ".join(models)
    if len(agent) > AGENT_MAX_CHARS:
        agent = agent[: AGENT_MAX_CHARS - 3] + "..."
    return {
        "question_name": QUESTION_PREFERENCE,
        "value": top,
        "score": round(counts.get(top, 0) / len(votes), 4),
        "agent": agent,
        "type": "model",
    }


def build_payload(
    pair: PairRecord,
    attributes: PreferenceAttributes | None,
    judgments: Sequence[Judgment] = (),
    *,
    round: int = 0,
    seed: int = 0,
    image_fields: int = 0,
    resolve_image: ImageResolver | None = None,
) -> RecordPayload:
    """Everything the verification dataset shows for one pair.

    `image_fields`: how many image fields the dataset has (build_settings); `resolve_image`:
    turns an image reference into the data URL the field shows (see ImageResolver).
    """
    order = candidate_order(pair.pair_id, seed)
    first, second = (
        (pair.chosen, pair.rejected) if order == CandidateOrder.chosen_first else (pair.rejected, pair.chosen)
    )
    priority = pair_priority(attributes)
    category = attributes.task_category if attributes is not None else UNKNOWN
    metadata = {
        META_SOURCE: pair.source or UNKNOWN,
        META_TASK_CATEGORY: category if category in TASK_CATEGORIES else UNKNOWN,
        META_OBJECTIVITY: attributes.objectivity.value if attributes is not None else UNKNOWN,
        META_CONTROVERSIALITY: attributes.controversiality.value if attributes is not None else UNKNOWN,
        META_ROUND: int(round),
        META_PRIORITY: priority,
        META_ORDER: order.value,
    }
    suggestions = []
    judged = judge_suggestion(judgments, order)
    if judged is not None:
        suggestions.append(judged)
    if attributes is not None:
        suggestions.append(
            {
                "question_name": QUESTION_OBJECTIVITY,
                "value": attributes.objectivity.value,
                "agent": ATTRIBUTES_AGENT,
                "type": "model",
            }
        )
    images = images_of(pair)[: min(image_fields, MAX_IMAGE_FIELDS)]
    shown = {image_field_name(k): image_value(image, resolve_image) for k, image in enumerate(images, 1)}
    fields: dict[str, Any] = {name: value for name, value in shown.items() if value is not None}
    return RecordPayload(
        id=record_id_for(pair.pair_id),
        fields={
            **fields,
            FIELD_CONVERSATION: _chat(pair, shown=len(images)),
            FIELD_CANDIDATE_1: first,
            FIELD_CANDIDATE_2: second,
            FIELD_ATTRIBUTES: attributes_markdown(attributes),
        },
        metadata=metadata,
        suggestions=suggestions,
        order=order,
        priority=priority,
    )


def build_payloads(
    pairs: Iterable[PairRecord],
    attributes: dict[str, PreferenceAttributes],
    judgments: Iterable[Judgment] = (),
    *,
    round: int = 0,
    seed: int = 0,
    image_fields: int = 0,
    resolve_image: ImageResolver | None = None,
) -> list[RecordPayload]:
    """Payloads in protocol order: objective + low controversy first, then by pair_id."""
    by_pair: dict[str, list[Judgment]] = {}
    for j in judgments:
        by_pair.setdefault(j.pair_id, []).append(j)
    payloads = [
        build_payload(p, attributes.get(p.pair_id), by_pair.get(p.pair_id, ()), round=round, seed=seed,
                      image_fields=image_fields, resolve_image=resolve_image)
        for p in pairs
    ]
    return sorted(payloads, key=lambda r: (r.priority, r.id))
