"""Inter-annotator agreement and progress: pure functions over verdict labels and Verifications.

Cohen's kappa compares two annotators on the items both labeled; Krippendorff's alpha (nominal)
handles any number of annotators and missing labels; each annotator is also compared with the
majority of the others. "Cannot decide" counts as a decision here (agreeing that a pair is
undecidable is agreement); records discarded as broken are left out.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

from schemas.labels import Verdict, Verification, VerificationStatus


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two label sequences over the same items; NaN when chance agreement is 1."""
    if len(a) != len(b):
        raise ValueError(f"label sequences differ in length ({len(a)} vs {len(b)})")
    if not a:
        return math.nan
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    count_a, count_b = Counter(a), Counter(b)
    expected = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if expected == 1.0:
        return math.nan
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float:
    """Krippendorff's alpha for nominal data; each unit is the labels it received (any count).

    Units with fewer than two labels carry no pairable information and are ignored. NaN when
    there is no variation at all (expected disagreement 0).
    """
    coincidence: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        for i, j in combinations(range(m), 2):
            coincidence[(labels[i], labels[j])] += 1.0 / (m - 1)
            coincidence[(labels[j], labels[i])] += 1.0 / (m - 1)
    totals: dict[Hashable, float] = defaultdict(float)
    for (c, _), value in coincidence.items():
        totals[c] += value
    n = sum(totals.values())
    if n <= 1:
        return math.nan
    observed = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if expected == 0:
        return math.nan
    return 1.0 - (n - 1.0) * observed / expected


def _newer(v: Verification, old: Verification) -> bool:
    if old.submitted_at is None:
        return True
    return v.submitted_at is not None and v.submitted_at >= old.submitted_at


def decision_labels(verifications: Iterable[Verification]) -> dict[str, dict[str, str]]:
    """pair_id -> annotator -> verdict label, latest response per annotator; broken-record
    discards (verdict `invalid`) are not decisions and are left out."""
    latest: dict[tuple[str, str], Verification] = {}
    for v in verifications:
        if v.verdict == Verdict.invalid:
            continue
        key = (v.pair_id, v.annotator)
        old = latest.get(key)
        if old is None or _newer(v, old):
            latest[key] = v
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for (pair_id, annotator), v in latest.items():
        out[pair_id][annotator] = v.verdict.value
    return dict(out)


@dataclass(frozen=True)
class AnnotatorStats:
    annotator: str
    submitted: int
    discarded: int
    compared: int
    agree_with_majority: int

    @property
    def majority_agreement(self) -> float:
        return self.agree_with_majority / self.compared if self.compared else math.nan


@dataclass(frozen=True)
class PairwiseKappa:
    annotator_a: str
    annotator_b: str
    items: int
    kappa: float


@dataclass(frozen=True)
class AgreementReport:
    overlapping_items: int
    alpha: float
    pairwise: list[PairwiseKappa]
    annotators: list[AnnotatorStats]


def annotator_stats(verifications: Sequence[Verification]) -> list[AnnotatorStats]:
    """Per annotator: counts, and agreement with the majority of the OTHER annotators per item
    (items where the others tie or nobody else answered are not compared)."""
    labels = decision_labels(verifications)
    submitted: Counter[str] = Counter()
    discarded: Counter[str] = Counter()
    for v in verifications:
        (submitted if v.status == VerificationStatus.submitted else discarded)[v.annotator] += 1
    compared: Counter[str] = Counter()
    agreed: Counter[str] = Counter()
    for by_annotator in labels.values():
        for annotator, label in by_annotator.items():
            others = Counter(lab for who, lab in by_annotator.items() if who != annotator).most_common()
            if not others or (len(others) > 1 and others[0][1] == others[1][1]):
                continue
            compared[annotator] += 1
            agreed[annotator] += others[0][0] == label
    names = sorted(set(submitted) | set(discarded))
    return [AnnotatorStats(n, submitted[n], discarded[n], compared[n], agreed[n]) for n in names]


def agreement_report(verifications: Sequence[Verification]) -> AgreementReport:
    """Alpha over every item labeled by two or more annotators, kappa for each annotator pair."""
    labels = decision_labels(verifications)
    overlapping = {pid: by for pid, by in labels.items() if len(by) >= 2}
    alpha = krippendorff_alpha_nominal([list(by.values()) for by in overlapping.values()])
    annotators = sorted({a for by in labels.values() for a in by})
    pairwise = []
    for a, b in combinations(annotators, 2):
        shared = [by for by in overlapping.values() if a in by and b in by]
        if shared:
            kappa = cohen_kappa([by[a] for by in shared], [by[b] for by in shared])
            pairwise.append(PairwiseKappa(a, b, len(shared), kappa))
    return AgreementReport(len(overlapping), alpha, pairwise, annotator_stats(verifications))


@dataclass(frozen=True)
class Progress:
    records: int
    answered: int
    completed: int
    discarded_items: int

    @property
    def pending(self) -> int:
        return max(self.records - self.completed, 0)

    @property
    def completed_share(self) -> float:
        return self.completed / self.records if self.records else 0.0


def progress(records: int, verifications: Iterable[Verification], overlap: int = 1) -> Progress:
    """How far verification is: `completed` items have `overlap` or more answers (submitted or
    cannot-decide); `discarded_items` have no decided answer but at least one discard."""
    answers: dict[str, list[Verification]] = defaultdict(list)
    for v in verifications:
        answers[v.pair_id].append(v)
    completed = sum(1 for vs in answers.values() if len({v.annotator for v in vs}) >= overlap)
    discarded = sum(1 for vs in answers.values() if all(v.status == VerificationStatus.discarded for v in vs))
    return Progress(records=records, answered=len(answers), completed=completed, discarded_items=discarded)
