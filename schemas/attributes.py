"""The 5-tuple of preference attributes that every pair gets (method.md)."""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

ATTRIBUTES_SCHEMA_VERSION = 1


class Objectivity(StrEnum):
    objective = "objective"
    subjective = "subjective"


class Controversiality(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"


TASK_CATEGORIES = (
    "math",
    "code",
    "reasoning",
    "factual-qa",
    "writing",
    "rewriting",
    "summarization",
    "brainstorming",
    "advice",
    "roleplay",
    "chit-chat",
    "safety",
    "other",
)


class PreferenceAttributes(BaseModel):
    """What an annotator or judge needs to know to decide a pair."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task_category: str = Field(description="One of TASK_CATEGORIES.")
    objectivity: Objectivity
    controversiality: Controversiality
    desired_attributes: list[str] = Field(
        min_length=1, max_length=8, description="What a good response to this prompt has."
    )
    guideline: str = Field(min_length=1, description="Instance-specific annotation guideline.")

    def priority(self) -> int:
        """Lower is verified first: objective, low-controversy pairs lead (the protocol)."""
        order = {"low": 0, "medium": 1, "high": 2}
        return (0 if self.objectivity == Objectivity.objective else 3) + order[
            self.controversiality.value
        ]


ATTRIBUTES_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("task_category", pa.string()),
        ("objectivity", pa.string()),
        ("controversiality", pa.string()),
        ("desired_attributes", pa.list_(pa.string())),
        ("guideline", pa.string()),
        ("model", pa.string()),
    ],
    metadata={"synpref.schema": "attributes", "synpref.version": str(ATTRIBUTES_SCHEMA_VERSION)},
)
