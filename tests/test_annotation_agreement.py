"""Agreement metrics, progress and gold majority on hand-checked examples."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from annotation.agreement import (
    agreement_report,
    annotator_stats,
    cohen_kappa,
    decision_labels,
    krippendorff_alpha_nominal,
    progress,
)
from annotation.gold import gold_labels
from schemas.labels import Verdict, Verification, VerificationStatus


def v(pair: str, who: str, verdict: str, *, status: str = "submitted", minute: int = 0, round: int = 1):
    return Verification(
        pair_id=pair,
        annotator=who,
        verdict=Verdict(verdict),
        status=VerificationStatus(status),
        submitted_at=datetime(2026, 1, 1, 12, minute, tzinfo=UTC),
        round=round,
    )


def test_cohen_kappa_hand_checked() -> None:
    # p_o = 3/4; p_e = 0.5*0.25 + 0.5*0.75 = 0.5; kappa = 0.25 / 0.5
    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
    assert cohen_kappa(list("abab"), list("abab")) == pytest.approx(1.0)
    # Systematic disagreement on balanced labels: p_o = 0, p_e = 0.5
    assert cohen_kappa(list("abab"), list("baba")) == pytest.approx(-1.0)
    # 2x2 table [[20, 5], [10, 15]]: p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5 -> 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))
    with pytest.raises(ValueError, match="length"):
        cohen_kappa([1], [1, 2])


def test_krippendorff_alpha_nominal_hand_checked() -> None:
    # Coincidences: o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6.
    # alpha = 1 - (n-1) * 2 / (2 * 3 * 3) = 1 - 10/18
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(1 - 10 / 18)
    assert krippendorff_alpha_nominal([["a", "a", "a"], ["b", "b"], ["c", "c"]]) == pytest.approx(1.0)
    # Three coders on one unit [a, a, b] plus [b, b]: o_aa = 1, o_ab = o_ba = 1, o_bb = 2 (from the
    # second unit); n_a = 2, n_b = 3, n = 5; alpha = 1 - 4 * 2 / (2 * 2 * 3) = 1/3.
    assert krippendorff_alpha_nominal([["a", "a", "b"], ["b", "b"]]) == pytest.approx(1 / 3)
    # Single-label units carry no information; no variation at all is undefined.
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b"], ["b", "b"], ["z"]]) == pytest.approx(
        1 - 10 / 18
    )
    assert math.isnan(krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]))
    assert math.isnan(krippendorff_alpha_nominal([]))


def test_alpha_on_the_kappa_table() -> None:
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    # Pooled: n_y = 55, n_n = 45, n = 100; o_yn = o_ny = 15.
    # alpha = 1 - 99 * 30 / (2 * 55 * 45) = 1 - 2970 / 4950 = 0.4
    assert krippendorff_alpha_nominal(list(zip(a, b, strict=True))) == pytest.approx(0.4)


def test_latest_decision_wins_and_broken_records_are_not_decisions() -> None:
    rows = [
        v("p1", "ann", "chosen", minute=1),
        v("p1", "ann", "rejected", minute=5),
        v("p2", "ann", "invalid", status="discarded"),
        v("p3", "ann", "tie", status="discarded"),
    ]
    assert decision_labels(rows) == {"p1": {"ann": "rejected"}, "p3": {"ann": "tie"}}


def test_report_counts_and_majority_agreement() -> None:
    rows = [
        v("p1", "a", "chosen"), v("p1", "b", "chosen"), v("p1", "c", "rejected"),
        v("p2", "a", "rejected"), v("p2", "b", "rejected"), v("p2", "c", "rejected"),
        v("p3", "a", "chosen"), v("p3", "b", "tie", status="discarded"),
        v("p4", "c", "chosen"),
    ]  # fmt: skip
    stats = {s.annotator: s for s in annotator_stats(rows)}
    assert (stats["a"].submitted, stats["a"].discarded) == (3, 0)
    assert (stats["b"].submitted, stats["b"].discarded) == (2, 1)
    # a vs others: p1 others = {chosen, rejected} tie -> skipped; p2 agree; p3 other = tie -> disagree
    assert (stats["a"].compared, stats["a"].agree_with_majority) == (2, 1)
    # c vs others: p1 others chosen (disagree), p2 agree, p4 nobody else
    assert (stats["c"].compared, stats["c"].agree_with_majority) == (2, 1)
    assert stats["c"].majority_agreement == pytest.approx(0.5)
    report = agreement_report(rows)
    assert report.overlapping_items == 3
    pairs = {(p.annotator_a, p.annotator_b): p for p in report.pairwise}
    assert pairs[("a", "b")].items == 3 and pairs[("a", "c")].items == 2
    # a vs b on p1..p3: (chosen, chosen), (rejected, rejected), (chosen, tie)
    # p_o = 2/3; p_e = (2/3 * 1/3) + (1/3 * 1/3) = 1/3; kappa = (1/3) / (2/3) = 0.5
    assert pairs[("a", "b")].kappa == pytest.approx(0.5)
    assert -1.0 <= report.alpha <= 1.0


def test_progress_with_overlap() -> None:
    rows = [
        v("p1", "a", "chosen"), v("p1", "b", "chosen"),
        v("p2", "a", "tie", status="discarded"),
        v("p3", "a", "invalid", status="discarded"), v("p3", "b", "tie", status="discarded"),
    ]  # fmt: skip
    done = progress(10, rows, overlap=2)
    assert (done.records, done.answered, done.completed, done.discarded_items) == (10, 3, 2, 2)
    assert done.pending == 8 and done.completed_share == pytest.approx(0.2)
    assert progress(10, rows, overlap=1).completed == 3


def test_gold_is_the_strict_majority_of_submitted_verdicts() -> None:
    rows = [
        v("p1", "a", "chosen"), v("p1", "b", "chosen"), v("p1", "c", "rejected", round=2),
        v("p2", "a", "chosen"), v("p2", "b", "rejected"),  # tie -> no gold
        v("p3", "a", "tie", status="discarded"),  # cannot decide -> no gold
        v("p4", "a", "invalid", status="discarded"),  # broken -> no gold
        v("p5", "a", "rejected"), v("p5", "b", "tie", status="discarded"),
    ]  # fmt: skip
    gold = {g.pair_id: g for g in gold_labels(rows)}
    assert set(gold) == {"p1", "p5"}
    assert gold["p1"].verdict == Verdict.chosen and gold["p1"].votes == {"chosen": 2, "rejected": 1}
    assert gold["p1"].round == 2
    assert gold["p5"].verdict == Verdict.rejected
    row = gold["p1"].to_row()
    assert row["origin"] == "human" and row["verdict"] == "chosen"
    assert {g.pair_id for g in gold_labels(rows, min_votes=2)} == {"p1"}
