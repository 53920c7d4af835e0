"""The judge interface, and how a stored pair is shown as Candidate 1 / Candidate 2.

Judges never see which response the source preferred: each pair is shown in an order picked by a
seeded hash (recorded in every Judgment) or in both orders, and the label a judge gives
("1" / "2") is mapped back to a verdict about the pair as stored.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import xxhash

from schemas.attributes import PreferenceAttributes
from schemas.errors import ConfigError, SynprefError
from schemas.labels import CandidateOrder, Judgment, Verdict
from schemas.pair import PairRecord

LABELS = ("1", "2")


class JudgeError(SynprefError, RuntimeError):
    """A judge backend failed for good (server down, timeouts after retries).

    `partial` holds the judgments completed before the failure, so callers can store them.
    """

    def __init__(self, message: str, partial: list[Judgment] | None = None) -> None:
        super().__init__(message)
        self.partial = list(partial or [])


@dataclass(frozen=True)
class LabeledExample:
    """A human-labeled pair shown to a judge as a worked example (retrieved near the target)."""

    pair: PairRecord
    verdict: Verdict
    attributes: PreferenceAttributes | None = None


def candidate_orders(pair_id: str, *, both: bool, seed: int, judge: str = "") -> list[CandidateOrder]:
    """Both orders, or one order drawn from a seeded hash of the pair (stable across runs)."""
    if both:
        return [CandidateOrder.chosen_first, CandidateOrder.rejected_first]
    bit = xxhash.xxh64_intdigest(f"{seed}:{judge}:{pair_id}".encode()) & 1
    return [CandidateOrder.chosen_first if bit == 0 else CandidateOrder.rejected_first]


def candidates(pair: PairRecord, order: CandidateOrder) -> tuple[str, str]:
    """(Candidate 1, Candidate 2) texts for the given order."""
    if order == CandidateOrder.chosen_first:
        return pair.chosen, pair.rejected
    return pair.rejected, pair.chosen


def verdict_from_label(label: str | None, order: CandidateOrder) -> Verdict:
    """Map "1" / "2" (the better candidate as shown) to a verdict about the stored pair."""
    if label not in LABELS:
        return Verdict.invalid
    first_wins = label == "1"
    chosen_first = order == CandidateOrder.chosen_first
    return Verdict.chosen if first_wins == chosen_first else Verdict.rejected


def margin_from_label_logprobs(lp1: float | None, lp2: float | None, order: CandidateOrder) -> float | None:
    """P(stored chosen better) - P(stored rejected better), from the two labels' logprobs.

    The two probabilities are renormalized over the labels; a label missing from the returned
    logprobs counts as probability zero. None when neither label was seen.
    """
    if lp1 is None and lp2 is None:
        return None
    p1 = math.exp(lp1) if lp1 is not None and math.isfinite(lp1) else 0.0
    p2 = math.exp(lp2) if lp2 is not None and math.isfinite(lp2) else 0.0
    if p1 + p2 <= 0.0:
        return None
    first = (p1 - p2) / (p1 + p2)
    return first if order == CandidateOrder.chosen_first else -first


def label_from_margin(margin_first: float) -> str:
    return "1" if margin_first >= 0 else "2"


class Judge(ABC):
    """One judge of the group. Subclasses return one Judgment per (pair, sample, order) they decide.

    A judge may abstain on a pair (rule verifiers without a reference answer): it returns no
    Judgment for it.
    """

    kind: str = ""

    def __init__(self, name: str, model: str = "", *, weight: float = 1.0, samples: int = 1,
                 both_orders: bool = True, examples: int = 8, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ConfigError(f"judge {name!r}: batch_size must be at least 1, not {batch_size}")
        self.name = name
        self.model = model
        self.weight = weight
        self.samples = samples
        self.both_orders = both_orders
        self.max_examples = examples
        self.batch_size = batch_size
        """Pairs per `judge()` call: one engine batch / one request wave, and one write."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r})"

    @abstractmethod
    def judge(
        self,
        pairs: list[PairRecord],
        *,
        attributes: dict[str, PreferenceAttributes],
        examples: dict[str, list[LabeledExample]],
        round: int,
        seed: int = 0,
    ) -> list[Judgment]:
        """Judge `pairs`; `attributes` and `examples` are keyed by pair_id (missing keys: none)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most judges hold nothing
        """Release engines or connections (the default holds none)."""
