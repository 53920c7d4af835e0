"""Dataset settings, the randomized candidate order and its inverse, suggestions, priority order."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from annotation.records import (
    build_payload,
    build_payloads,
    judge_suggestion,
    label_for_verdict,
    verdict_for_label,
)
from annotation.settings import (
    FIELD_CANDIDATE_1,
    FIELD_CANDIDATE_2,
    LABEL_CANDIDATE_1,
    LABEL_CANDIDATE_2,
    LABEL_CANNOT_DECIDE,
    META_ORDER,
    META_PRIORITY,
    PREFERENCE_LABELS,
    QUESTION_PREFERENCE,
    candidate_order,
    load_guidelines,
)
from pipeline.sources import load_pairs
from schemas.attributes import PreferenceAttributes
from schemas.labels import CandidateOrder, Judgment, Verdict
from schemas.pair import PairRecord

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pairs() -> list[PairRecord]:
    loaded = load_pairs(str(REPO / "examples" / "data" / "llmbar-natural"), limit=40)
    return [PairRecord.from_row(r) for r in loaded.pairs.to_pylist()]


def attrs(objectivity: str, controversiality: str) -> PreferenceAttributes:
    return PreferenceAttributes(
        task_category="factual-qa",
        objectivity=objectivity,
        controversiality=controversiality,
        desired_attributes=["correct", "concise"],
        guideline="Check the facts.",
    )


def test_order_is_seeded_per_pair_and_balanced(pairs: list[PairRecord]) -> None:
    ids = [f"{i:032x}" for i in range(2000)]
    orders = [candidate_order(i, seed=7) for i in ids]
    assert orders == [candidate_order(i, seed=7) for i in ids]
    share = Counter(orders)[CandidateOrder.chosen_first] / len(ids)
    assert 0.45 < share < 0.55
    assert orders != [candidate_order(i, seed=8) for i in ids]


@pytest.mark.parametrize("order", list(CandidateOrder))
@pytest.mark.parametrize("verdict", [Verdict.chosen, Verdict.rejected, Verdict.tie])
def test_label_and_verdict_are_inverse(order: CandidateOrder, verdict: Verdict) -> None:
    label = label_for_verdict(verdict, order)
    assert label in PREFERENCE_LABELS
    assert verdict_for_label(label, order) == verdict


def test_verdicts_map_through_the_shown_order() -> None:
    assert verdict_for_label(LABEL_CANDIDATE_1, CandidateOrder.chosen_first) == Verdict.chosen
    assert verdict_for_label(LABEL_CANDIDATE_1, CandidateOrder.rejected_first) == Verdict.rejected
    assert verdict_for_label(LABEL_CANDIDATE_2, CandidateOrder.rejected_first) == Verdict.chosen
    assert verdict_for_label(LABEL_CANNOT_DECIDE, CandidateOrder.rejected_first) == Verdict.tie
    assert label_for_verdict(Verdict.invalid, CandidateOrder.chosen_first) is None
    with pytest.raises(ValueError, match="unknown preference label"):
        verdict_for_label("3", CandidateOrder.chosen_first)


def test_payload_shows_candidates_in_the_recorded_order(pairs: list[PairRecord]) -> None:
    seen = set()
    for pair in pairs:
        payload = build_payload(pair, None, round=2, seed=0)
        order = CandidateOrder(payload.metadata[META_ORDER])
        seen.add(order)
        first = pair.chosen if order == CandidateOrder.chosen_first else pair.rejected
        second = pair.rejected if order == CandidateOrder.chosen_first else pair.chosen
        assert payload.fields[FIELD_CANDIDATE_1] == first and payload.fields[FIELD_CANDIDATE_2] == second
        assert payload.id == pair.pair_id and payload.metadata["round"] == 2
        assert payload.fields["conversation"][0]["content"] == pair.conversation[0].content
        assert payload.suggestions == []
    assert seen == set(CandidateOrder), "40 real pairs should show both orders"


def test_judge_votes_become_one_suggestion_relative_to_the_shown_order() -> None:
    def j(judge: str, verdict: str) -> Judgment:
        return Judgment(pair_id="p", judge=judge, model=f"org/{judge}", verdict=Verdict(verdict))

    votes = [j("a", "chosen"), j("b", "chosen"), j("c", "rejected"), j("d", "invalid")]
    first = judge_suggestion(votes, CandidateOrder.chosen_first)
    assert first is not None
    assert first["question_name"] == QUESTION_PREFERENCE and first["value"] == LABEL_CANDIDATE_1
    assert first["score"] == pytest.approx(2 / 3, abs=1e-4)
    assert first["agent"] == "org/a org/b org/c"
    flipped = judge_suggestion(votes, CandidateOrder.rejected_first)
    assert flipped is not None and flipped["value"] == LABEL_CANDIDATE_2
    split = judge_suggestion([j("a", "chosen"), j("b", "rejected")], CandidateOrder.chosen_first)
    assert split is not None and split["value"] == LABEL_CANNOT_DECIDE
    assert judge_suggestion([j("d", "invalid")], CandidateOrder.chosen_first) is None


def test_payloads_come_in_protocol_priority_order(pairs: list[PairRecord]) -> None:
    subset = pairs[:4]
    attributes = {
        subset[0].pair_id: attrs("subjective", "high"),
        subset[1].pair_id: attrs("objective", "low"),
        subset[2].pair_id: attrs("objective", "medium"),
    }
    payloads = build_payloads(subset, attributes)
    assert [p.id for p in payloads] == [
        subset[1].pair_id,
        subset[2].pair_id,
        subset[0].pair_id,
        subset[3].pair_id,
    ]
    assert [p.metadata[META_PRIORITY] for p in payloads] == [0, 1, 5, 6]
    assert "Check the facts." in payloads[0].fields["attributes"]


def test_guidelines_state_the_protocol() -> None:
    text = load_guidelines()
    assert text.startswith("# ")
    for phrase in (
        "never be taken from an LLM alone",
        "objective, low-controversy pairs first",
        "discarded, not guessed",
    ):
        assert phrase in text
