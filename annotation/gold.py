"""Gold labels from human verifications: the majority of submitted verdicts per pair.

Only decided, submitted verdicts (`chosen` / `rejected` on the stored pair) vote. A pair whose
votes tie, or that every annotator discarded or could not decide, gets no gold label: the
protocol discards undecidable pairs rather than guessing.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from annotation.agreement import decision_labels
from schemas.labels import LabelOrigin, Verdict, Verification, VerificationStatus


@dataclass(frozen=True)
class GoldLabel:
    pair_id: str
    verdict: Verdict
    round: int
    votes: dict[str, int]

    def to_row(self) -> dict:
        """A row of the LABELS schema (gold table)."""
        return {
            "pair_id": self.pair_id,
            "verdict": self.verdict.value,
            "origin": LabelOrigin.human.value,
            "round": self.round,
            "detail": json.dumps({"votes": self.votes}, sort_keys=True),
        }


def gold_labels(verifications: Iterable[Verification], *, min_votes: int = 1) -> list[GoldLabel]:
    """One label per pair with a strict majority among at least `min_votes` decided votes."""
    items = list(verifications)
    latest = decision_labels(items)
    rounds: dict[str, int] = defaultdict(int)
    for v in items:
        rounds[v.pair_id] = max(rounds[v.pair_id], v.round)
    submitted = {(v.pair_id, v.annotator) for v in items if v.status == VerificationStatus.submitted}
    out = []
    for pair_id in sorted(latest):
        votes = Counter(
            label
            for annotator, label in latest[pair_id].items()
            if (pair_id, annotator) in submitted and label in (Verdict.chosen.value, Verdict.rejected.value)
        )
        ranked = votes.most_common()
        if not ranked or sum(votes.values()) < min_votes:
            continue
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            continue
        out.append(GoldLabel(pair_id, Verdict(ranked[0][0]), rounds[pair_id], dict(sorted(votes.items()))))
    return out
