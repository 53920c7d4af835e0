"""Judgments, human verifications, gold/silver labels, RM scores and filter decisions.

Verdicts always refer to the pair as stored in the pool: `chosen` means the stored chosen
response is better (the source label holds), `rejected` means the stored rejected response is
better (the label is flipped), `tie` means neither is (undecidable pairs are discarded).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

LABELS_SCHEMA_VERSION = 1


class Verdict(StrEnum):
    chosen = "chosen"
    rejected = "rejected"
    tie = "tie"
    invalid = "invalid"


class CandidateOrder(StrEnum):
    """How the stored pair was shown: `chosen_first` puts the stored chosen as Candidate 1."""

    chosen_first = "chosen_first"
    rejected_first = "rejected_first"


class Judgment(BaseModel):
    """One raw judge output: one (pair, judge, sample, order)."""

    model_config = ConfigDict(frozen=True)

    pair_id: str
    judge: str
    model: str
    sample: int = 0
    order: CandidateOrder = CandidateOrder.chosen_first
    verdict: Verdict
    margin: float | None = Field(
        default=None, description="P(stored chosen better) - P(stored rejected better), in [-1, 1]."
    )
    raw_text: str = ""
    round: int = 0


class VerificationStatus(StrEnum):
    submitted = "submitted"
    discarded = "discarded"


class Verification(BaseModel):
    """One human verdict pulled from Argilla."""

    model_config = ConfigDict(frozen=True)

    pair_id: str
    annotator: str
    verdict: Verdict
    confidence: int | None = None
    objective: bool | None = None
    rationale: str = ""
    status: VerificationStatus = VerificationStatus.submitted
    reason: str = ""
    submitted_at: datetime | None = None
    record_id: str = ""
    round: int = 0


class LabelOrigin(StrEnum):
    """Where a gold or silver label came from."""

    human = "human"
    source = "source"
    judges = "judges"
    rm = "rm"


JUDGMENTS_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("judge", pa.string()),
        ("model", pa.string()),
        ("sample", pa.int32()),
        ("order", pa.string()),
        ("verdict", pa.string()),
        ("margin", pa.float64()),
        ("raw_text", pa.string()),
        ("round", pa.int32()),
    ],
    metadata={"synpref.schema": "judgments", "synpref.version": str(LABELS_SCHEMA_VERSION)},
)

VERIFICATIONS_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("annotator", pa.string()),
        ("verdict", pa.string()),
        ("confidence", pa.int32()),
        ("objective", pa.bool_()),
        ("rationale", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("submitted_at", pa.timestamp("us", tz="UTC")),
        ("record_id", pa.string()),
        ("round", pa.int32()),
    ],
    metadata={"synpref.schema": "verifications", "synpref.version": str(LABELS_SCHEMA_VERSION)},
)

LABELS_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("verdict", pa.string()),
        ("origin", pa.string()),
        ("round", pa.int32()),
        ("detail", pa.string()),
    ],
    metadata={"synpref.schema": "labels", "synpref.version": str(LABELS_SCHEMA_VERSION)},
)
"""The gold and silver tables: the label a pair carries in the loop and where it came from."""

SCORES_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("round", pa.int32()),
        ("model", pa.string()),
        ("r_chosen", pa.float64()),
        ("r_rejected", pa.float64()),
        ("p", pa.float64()),
    ],
    metadata={"synpref.schema": "scores", "synpref.version": str(LABELS_SCHEMA_VERSION)},
)
"""RM scores per pair per round; p = sigmoid(r_chosen - r_rejected)."""

DECISIONS_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("stage", pa.string()),
        ("filter", pa.string()),
        ("decision", pa.string()),
        ("reason", pa.string()),
        ("round", pa.int32()),
    ],
    metadata={"synpref.schema": "decisions", "synpref.version": str(LABELS_SCHEMA_VERSION)},
)
"""Stage-2 decisions: keep / drop / flip, with the filter and the reason."""

GOLD_PARTS = ("train", "eval")
GOLD_SPLIT_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("part", pa.string()),
        ("stratum", pa.string()),
        ("round", pa.int32()),
    ],
    metadata={"synpref.schema": "gold_split", "synpref.version": str(LABELS_SCHEMA_VERSION)},
)
"""Which gold pairs may train and guide (`train`: gold RM, judge examples, retrieval anchors)
and which only evaluate (`eval`: nothing trains on them or sees them as an example). A pair's
part is assigned once, when it joins gold, and never changes."""
