"""What every rule verifier returns, and the interface the rule judge calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from schemas.labels import Verdict
from schemas.pair import PairRecord


@dataclass(frozen=True)
class RuleCheck:
    """One rule's result on one pair: a verdict about the stored pair, or None (abstain).

    `detail` says what was checked and found, for the judgments table's raw_text.
    """

    verdict: Verdict | None
    detail: str


class Rule(ABC):
    """A verifier for one kind of objective pair (math answer, multiple choice, unit tests)."""

    name: str = ""
    model: str = ""
    """Recorded as the judgment's model, so verifier votes are told apart from LLM votes."""

    @abstractmethod
    def applies(self, pair: PairRecord) -> bool:
        """Whether the pair carries what this rule needs (a reference, options, tests)."""

    @abstractmethod
    def check(self, pair: PairRecord) -> RuleCheck:
        """Decide one pair (only called when `applies`)."""

    def check_many(self, pairs: list[PairRecord]) -> list[RuleCheck]:
        """Decide many pairs; rules with slow checks (running code) override this to run in parallel."""
        return [self.check(p) for p in pairs]


def decide(chosen_ok: bool | None, rejected_ok: bool | None, detail: str) -> RuleCheck:
    """A verdict only when exactly one response is known right and the other known wrong."""
    if chosen_ok is None or rejected_ok is None or chosen_ok == rejected_ok:
        return RuleCheck(None, detail)
    return RuleCheck(Verdict.chosen if chosen_ok else Verdict.rejected, detail)
