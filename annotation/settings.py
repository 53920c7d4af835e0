"""The Argilla dataset layout for human verification, derived from the pair and attribute schemas.

Annotators see the conversation as a chat, two candidates in a per-record random order (so the
source label cannot bias them), and the 5-tuple of attributes; they answer which candidate is
better (or that they cannot decide), how confident they are, whether the prompt is objective,
and an optional rationale. The shown order is kept in hidden metadata so verdicts map back to
the stored pair. A dataset for pairs with images adds image fields ("Image 1" ... "Image k",
optional), shown above the conversation, which marks where each was attached.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING

from schemas.attributes import TASK_CATEGORIES, Controversiality, Objectivity
from schemas.labels import CandidateOrder

if TYPE_CHECKING:
    import argilla as rg

FIELD_CONVERSATION = "conversation"
FIELD_CANDIDATE_1 = "candidate_1"
FIELD_CANDIDATE_2 = "candidate_2"
FIELD_ATTRIBUTES = "attributes"
FIELD_IMAGE_PREFIX = "image_"
MAX_IMAGE_FIELDS = 4
"""Image fields a dataset can have: a pair's first images are shown, the rest only marked."""

QUESTION_PREFERENCE = "preference"
QUESTION_CONFIDENCE = "confidence"
QUESTION_OBJECTIVITY = "objectivity_check"
QUESTION_RATIONALE = "rationale"

LABEL_CANDIDATE_1 = "candidate_1"
LABEL_CANDIDATE_2 = "candidate_2"
LABEL_CANNOT_DECIDE = "cannot_decide"
PREFERENCE_LABELS = {
    LABEL_CANDIDATE_1: "Candidate 1 is better",
    LABEL_CANDIDATE_2: "Candidate 2 is better",
    LABEL_CANNOT_DECIDE: "Cannot decide",
}
OBJECTIVITY_LABELS = {
    Objectivity.objective.value: "Objective: one answer is verifiably better",
    Objectivity.subjective.value: "Subjective: it depends on taste or values",
}
CONFIDENCE_VALUES = [1, 2, 3, 4, 5]

META_SOURCE = "source"
META_TASK_CATEGORY = "task_category"
META_OBJECTIVITY = "objectivity"
META_CONTROVERSIALITY = "controversiality"
META_ROUND = "round"
META_PRIORITY = "priority"
META_ORDER = "order"
UNKNOWN = "unknown"
NO_ATTRIBUTES_PRIORITY = 6
"""Pairs without attributes go after every attributed pair (attribute priorities are 0..5)."""


def load_guidelines() -> str:
    """The annotation protocol in Markdown, as shipped with the package."""
    return resources.files("annotation").joinpath("guidelines.md").read_text(encoding="utf-8")


def candidate_order(pair_id: str, seed: int = 0) -> CandidateOrder:
    """The order a pair is shown in: random per pair, reproducible from (seed, pair_id).

    Re-pushing a pair therefore never reshuffles what an annotator already saw.
    """
    rng = random.Random(f"{seed}:{pair_id}")
    return CandidateOrder.chosen_first if rng.random() < 0.5 else CandidateOrder.rejected_first


def image_field_name(k: int) -> str:
    """The field that shows a pair's k-th image (1-based)."""
    return f"{FIELD_IMAGE_PREFIX}{k}"


def image_fields_for(image_counts: Iterable[int]) -> int:
    """Image fields a batch needs: its most images in one pair, capped at MAX_IMAGE_FIELDS."""
    return min(MAX_IMAGE_FIELDS, max(image_counts, default=0))


def dataset_image_fields(dataset: rg.Dataset) -> int:
    """How many image fields an existing dataset has (what `build_payloads(image_fields=...)` fills)."""
    names = {f.name for f in dataset.settings.fields}
    return sum(1 for k in range(1, MAX_IMAGE_FIELDS + 1) if image_field_name(k) in names)


def build_settings(client: rg.Argilla, *, overlap: int = 1, guidelines: str | None = None,
                   image_fields: int = 0) -> rg.Settings:
    """rg.Settings for the verification dataset; `overlap` = submitted responses per record.

    `image_fields` > 0 (a batch with images; see `image_fields_for`) adds that many optional
    ImageFields before the conversation. Argilla fixes fields when a dataset is created, so a
    dataset that will hold image pairs must be created with them.
    The SDK binds every setting to a client, so one is needed even before the dataset exists.
    """
    import argilla as rg

    if overlap < 1:
        raise ValueError(f"overlap must be >= 1, got {overlap}")
    if not 0 <= image_fields <= MAX_IMAGE_FIELDS:
        raise ValueError(f"image_fields must be in 0..{MAX_IMAGE_FIELDS}, got {image_fields}")
    images = [rg.ImageField(name=image_field_name(k), title=f"Image {k}", required=False, _client=client)
              for k in range(1, image_fields + 1)]
    return rg.Settings(
        guidelines=guidelines if guidelines is not None else load_guidelines(),
        fields=[
            *images,
            rg.ChatField(name=FIELD_CONVERSATION, title="Conversation", _client=client),
            rg.TextField(client=client, name=FIELD_CANDIDATE_1, title="Candidate 1", use_markdown=True),
            rg.TextField(client=client, name=FIELD_CANDIDATE_2, title="Candidate 2", use_markdown=True),
            rg.TextField(
                client=client, name=FIELD_ATTRIBUTES, title="Attributes and guideline", use_markdown=True
            ),
        ],
        questions=[
            rg.LabelQuestion(
                client=client,
                name=QUESTION_PREFERENCE,
                title="Which candidate is better?",
                labels=PREFERENCE_LABELS,
                description="Cannot decide discards the pair; never guess.",
            ),
            rg.RatingQuestion(
                client=client,
                name=QUESTION_CONFIDENCE,
                title="Confidence (1 = a guess, 5 = certain)",
                values=CONFIDENCE_VALUES,
            ),
            rg.LabelQuestion(
                client=client,
                name=QUESTION_OBJECTIVITY,
                title="Is there a verifiably better answer?",
                labels=OBJECTIVITY_LABELS,
            ),
            rg.TextQuestion(
                client=client,
                name=QUESTION_RATIONALE,
                title="Rationale (optional)",
                required=False,
                use_markdown=True,
            ),
        ],
        metadata=[
            rg.TermsMetadataProperty(client=client, name=META_SOURCE, title="Source"),
            rg.TermsMetadataProperty(
                client=client,
                name=META_TASK_CATEGORY,
                title="Task category",
                options=[*TASK_CATEGORIES, UNKNOWN],
            ),
            rg.TermsMetadataProperty(
                client=client,
                name=META_OBJECTIVITY,
                title="Objectivity",
                options=[*(o.value for o in Objectivity), UNKNOWN],
            ),
            rg.TermsMetadataProperty(
                client=client,
                name=META_CONTROVERSIALITY,
                title="Controversiality",
                options=[*(c.value for c in Controversiality), UNKNOWN],
            ),
            rg.IntegerMetadataProperty(client=client, name=META_ROUND, title="Round", min=0),
            rg.IntegerMetadataProperty(
                client=client,
                name=META_PRIORITY,
                title="Priority (lower first)",
                min=0,
                max=NO_ATTRIBUTES_PRIORITY,
            ),
            # Hidden: seeing the order would tell annotators which candidate the source preferred.
            rg.TermsMetadataProperty(
                client=client,
                name=META_ORDER,
                title="Candidate order",
                options=[o.value for o in CandidateOrder],
                visible_for_annotators=False,
            ),
        ],
        distribution=rg.TaskDistribution(min_submitted=overlap),
    )
