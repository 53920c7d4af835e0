"""Stage-2 filters and the stage-1 priority batch on constructed cases with exact outcomes."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.consistency import (
    choose_priority_batch,
    curated_selection,
    decisions_table,
    filter_a,
    filter_b,
    final_decisions,
    recycle_flips,
    stage2_decisions,
)
from schemas.labels import DECISIONS_SCHEMA

# Cases: pair -> (p_best, p_gold, judges' verdict or None)
CASES = {
    "easy-gold-agrees": (0.9, 0.8, None),          # A drop, B keep (best RM)
    "easy-gold-disagrees": (0.9, 0.2, None),       # A drop, B discard, recycle drop (best RM disagrees)
    "hard-judges-agree": (0.3, 0.7, "chosen"),     # A relabel, B keep (judges)
    "hard-judges-flip": (0.3, 0.2, "rejected"),    # A relabel, B discard, recycle flip (judges)
    "hard-gold-only": (0.4, 0.9, "rejected"),      # A relabel, B discard (neither), recycle drop
    "hard-best-flips": (0.1, 0.3, "tie"),          # A relabel, B discard, recycle flip (best RM)
    "boundary": (0.5, 0.5, None),                  # A relabel (p <= 0.5), B discard, recycle drop
}


def frames() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ids = list(CASES)
    best = pl.DataFrame({"pair_id": ids, "p": [CASES[i][0] for i in ids]})
    gold = pl.DataFrame({"pair_id": ids, "p": [CASES[i][1] for i in ids]})
    judged = [i for i in ids if CASES[i][2] is not None]
    votes = pl.DataFrame({"pair_id": judged, "verdict": [CASES[i][2] for i in judged]})
    return best, gold, votes


def as_dict(decisions: pl.DataFrame) -> dict[str, str]:
    return dict(zip(decisions["pair_id"].to_list(), decisions["decision"].to_list(), strict=True))


def test_filter_a_drops_pairs_the_best_rm_gets_right() -> None:
    best, _, _ = frames()
    out = filter_a(best, round_=3)
    assert as_dict(out) == {
        "easy-gold-agrees": "drop",
        "easy-gold-disagrees": "drop",
        "hard-judges-agree": "relabel",
        "hard-judges-flip": "relabel",
        "hard-gold-only": "relabel",
        "hard-best-flips": "relabel",
        "boundary": "relabel",
    }
    assert set(out["filter"]) == {"A"} and set(out["stage"]) == {"stage2"} and set(out["round"]) == {3}
    reason = out.filter(pl.col("pair_id") == "easy-gold-agrees")["reason"][0]
    assert reason == "best RM already right: p=0.9 > 0.5"


def test_filter_b_needs_gold_rm_and_one_more_witness() -> None:
    best, gold, votes = frames()
    out = filter_b(best, gold, votes, round_=3)
    assert as_dict(out) == {
        "easy-gold-agrees": "keep",
        "easy-gold-disagrees": "discard",
        "hard-judges-agree": "keep",
        "hard-judges-flip": "discard",
        "hard-gold-only": "discard",
        "hard-best-flips": "discard",
        "boundary": "discard",
    }
    reasons = dict(zip(out["pair_id"], out["reason"], strict=True))
    assert reasons["easy-gold-agrees"].startswith("label agrees with gold RM and best RM")
    assert reasons["hard-judges-agree"].startswith("label agrees with gold RM and judges")
    assert reasons["easy-gold-disagrees"].startswith("gold RM disagrees")
    assert reasons["hard-gold-only"].startswith("gold RM agrees but neither judges nor best RM do")
    assert "judges=rejected" in reasons["hard-gold-only"]


def test_filter_b_says_when_no_judge_saw_a_pair() -> None:
    best = pl.DataFrame({"pair_id": ["unjudged", "judged"], "p": [0.3, 0.3]})
    gold = pl.DataFrame({"pair_id": ["unjudged", "judged"], "p": [0.8, 0.8]})
    votes = pl.DataFrame({"pair_id": ["judged"], "verdict": ["rejected"]})
    out = filter_b(best, gold, votes, round_=3)
    reasons = dict(zip(out["pair_id"], out["reason"], strict=True))
    assert as_dict(out) == {"unjudged": "discard", "judged": "discard"}
    assert reasons["unjudged"].startswith("gold RM agrees, best RM does not, and no judge saw the pair")
    assert reasons["judged"].startswith("gold RM agrees but neither judges nor best RM do")


def test_recycling_flips_only_pairs_whose_flip_passes_filter_b() -> None:
    best, gold, votes = frames()
    b = filter_b(best, gold, votes, round_=3)
    out = recycle_flips(b.filter(pl.col("decision") == "discard"), best, gold, votes, round_=3)
    assert as_dict(out) == {
        "easy-gold-disagrees": "drop",
        "hard-judges-flip": "flip",
        "hard-gold-only": "drop",
        "hard-best-flips": "flip",
        "boundary": "drop",
    }


def test_final_decisions_give_one_outcome_per_pair() -> None:
    best, gold, votes = frames()
    with_recycling = final_decisions(stage2_decisions(best, gold, votes, 3, recycle=True))
    assert as_dict(with_recycling) == {
        "easy-gold-agrees": "keep",
        "easy-gold-disagrees": "drop",
        "hard-judges-agree": "keep",
        "hard-judges-flip": "flip",
        "hard-gold-only": "drop",
        "hard-best-flips": "flip",
        "boundary": "drop",
    }
    without = final_decisions(stage2_decisions(best, gold, votes, 3, recycle=False))
    assert sorted(k for k, v in as_dict(without).items() if v != "drop") == [
        "easy-gold-agrees", "hard-judges-agree",
    ]
    assert with_recycling["pair_id"].is_unique().all()


def test_every_decision_fits_the_decisions_table() -> None:
    best, gold, votes = frames()
    table = decisions_table(stage2_decisions(best, gold, votes, 3, recycle=True))
    assert table.schema.equals(DECISIONS_SCHEMA, check_metadata=False)
    assert table.num_rows == 7 + 7 + 5


def test_missing_gold_scores_name_the_pair() -> None:
    best, gold, votes = frames()
    with pytest.raises(ValueError, match=r"gold RM scores missing for 1 pairs, e\.g\. boundary"):
        filter_b(best, gold.filter(pl.col("pair_id") != "boundary"), votes, round_=1)


def test_curated_selection_prefers_gold_then_silver_then_stage2() -> None:
    gold = pl.DataFrame({
        "pair_id": ["g1", "g2", "g3"], "verdict": ["chosen", "rejected", "tie"],
        "origin": ["source", "human", "human"], "round": [1, 1, 1],
    })
    silver = pl.DataFrame({
        "pair_id": ["s1", "g1"], "verdict": ["rejected", "chosen"],
        "origin": ["judges", "judges"], "round": [2, 2],
    })
    best, gold_p, votes = frames()
    decisions = stage2_decisions(best, gold_p, votes, 4, recycle=True)
    sel = curated_selection(gold, silver, decisions)
    rows = {r["pair_id"]: (r["flipped"], r["origin"], r["round"], r["filter"]) for r in sel.to_dicts()}
    assert rows == {
        "g1": (False, "source", 1, "gold"),
        "g2": (True, "human", 1, "gold"),
        "s1": (True, "judges", 2, "silver"),
        "easy-gold-agrees": (False, "source", 4, "B"),
        "hard-judges-agree": (False, "source", 4, "B"),
        "hard-judges-flip": (True, "rm", 4, "recycle"),
        "hard-best-flips": (True, "rm", 4, "recycle"),
    }


def pool_frame() -> pl.DataFrame:
    rows = []
    for source in ("a", "b"):
        for category in ("math", "chat"):
            for obj in ("objective", "subjective"):
                for contro in ("low", "high"):
                    for i in range(3):
                        rows.append({
                            "pair_id": f"{source}-{category}-{obj}-{contro}-{i}",
                            "source": source, "task_category": category,
                            "objectivity": obj, "controversiality": contro,
                        })
    return pl.DataFrame(rows)


def test_priority_batch_takes_objective_low_controversy_first_and_spreads_strata() -> None:
    batch = choose_priority_batch(pool_frame(), size=8, seed=7)
    assert batch.height == 8
    first_tier = batch.head(4)
    assert set(first_tier["objectivity"]) == {"objective"}
    assert set(first_tier["controversiality"]) == {"low"}
    # The four first picks cover all four (source, category) strata.
    assert set(zip(first_tier["source"], first_tier["task_category"], strict=True)) == {
        ("a", "math"), ("a", "chat"), ("b", "math"), ("b", "chat"),
    }
    assert batch["priority"].to_list() == sorted(batch["priority"].to_list())


def test_priority_batch_is_reproducible_from_its_seed_and_input_order() -> None:
    pool = pool_frame()
    first = choose_priority_batch(pool, 10, seed=1)["pair_id"].to_list()
    shuffled = choose_priority_batch(pool.sample(fraction=1.0, shuffle=True, seed=3), 10, seed=1)
    assert shuffled["pair_id"].to_list() == first
    assert choose_priority_batch(pool, 10, seed=2)["pair_id"].to_list() != first


def test_priority_batch_excludes_and_handles_missing_attributes() -> None:
    pool = pl.DataFrame({"pair_id": ["x", "y", "z"], "source": ["s", "s", "t"]})
    batch = choose_priority_batch(pool, 5, seed=0, exclude={"y"})
    assert sorted(batch["pair_id"].to_list()) == ["x", "z"]
    assert choose_priority_batch(pool, 0, seed=0).height == 0
