"""The gates: a label changes or drops only on evidence reliable on evaluation gold."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from pipeline.consistency import final_decisions
from pipeline.gates import Evidence, Trust, flip_precision, gate_silver, gated_stage2_decisions

GOOD = {"value": 0.9, "low": 0.84, "high": 0.94, "n": 150}
CHANCE = {"value": 0.51, "low": 0.44, "high": 0.58, "n": 150}


def trust(gold: dict, best: dict, judges: dict, *, coef: dict | None = None, prior: float | None = 0.2,
          minimum: float = 0.6) -> Trust:
    evidence = {
        "gold": Evidence("gold RM", gold, gold["low"] >= minimum),
        "best": Evidence("best RM", best, best["low"] >= minimum),
        "judges": Evidence("judges' vote", judges, judges["low"] >= minimum),
    }
    return Trust(evidence, coef or {"gold": 1.0, "best": 1.0, "judges": 1.0}, prior, minimum, 0.8)


def votes(scores: list[float]) -> pl.DataFrame:
    return pl.DataFrame({"pair_id": [f"p{i}" for i in range(len(scores))], "score": scores,
                         "voters": [0 if s == 0 else 2 for s in scores]})


def test_silver_abstains_when_the_judges_vote_is_not_reliable() -> None:
    gated = gate_silver(votes([-9.0, -3.0, 4.0]), trust(GOOD, GOOD, CHANCE))
    assert gated["verdict"].to_list() == ["chosen"] * 3
    assert set(gated["action"]) == {"abstained"}
    reason = json.loads(gated["detail"][0])["gate"]
    assert "0.510 [0.440, 0.580]" in reason and "< 0.60" in reason


def test_silver_flips_only_where_the_calibrated_probability_is_high() -> None:
    # coef 1, prior 0.2: P(wrong) = 1 / (1 + exp(score + log 4)); above 0.8 needs score < -2.77.
    gated = gate_silver(votes([-5.0, -2.0, 3.0, 0.0]), trust(GOOD, GOOD, GOOD))
    assert gated["action"].to_list() == ["flipped", "abstained", "kept", "abstained"]
    assert gated["verdict"].to_list() == ["rejected", "chosen", "chosen", "chosen"]
    assert json.loads(gated["detail"][0])["p_wrong"] > 0.8 > json.loads(gated["detail"][1])["p_wrong"]


def stage2_frames() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ids = ["a", "b", "c", "d"]
    best = pl.DataFrame({"pair_id": ids, "p": [0.9, 0.45, 0.05, 0.4]})
    gold = pl.DataFrame({"pair_id": ids, "p": [0.8, 0.45, 0.02, 0.7]})
    judged = pl.DataFrame({"pair_id": ["b", "c", "d"], "verdict": ["rejected", "rejected", "chosen"],
                           "score": [-0.5, -4.0, 2.0], "voters": [2, 2, 2]})
    return best, gold, judged


def test_stage2_abstains_on_every_pair_when_no_evidence_is_reliable() -> None:
    best, gold, judged = stage2_frames()
    decisions = gated_stage2_decisions(best, gold, judged, 3, trust(CHANCE, CHANCE, CHANCE), recycle=True)
    b = decisions.filter(pl.col("filter") == "B")
    assert set(b["decision"]) == {"abstain"}
    assert all("abstained: gold RM 0.510 [0.440, 0.580], n=150 < 0.60" in r for r in b["reason"])
    final = final_decisions(decisions)
    assert set(final["decision"]) == {"abstain"}  # nothing changed, nothing dropped


def test_stage2_acts_on_reliable_evidence_and_flips_only_confident_pairs() -> None:
    best, gold, judged = stage2_frames()
    decisions = gated_stage2_decisions(best, gold, judged, 3, trust(GOOD, GOOD, GOOD), recycle=True)
    final = dict(final_decisions(decisions).select("pair_id", "decision").iter_rows())
    # a: everything agrees; d: gold RM and judges agree; b: discarded but the evidence is weak;
    # c: every source says the stored label is wrong, strongly.
    assert final == {"a": "keep", "b": "drop", "c": "flip", "d": "keep"}
    reasons = dict(decisions.filter(pl.col("filter") == "recycle").select("pair_id", "reason").iter_rows())
    assert reasons["c"].startswith("flipped: P(stored label wrong)")
    assert reasons["b"].startswith("dropped, not flipped")


def test_unreliable_sources_are_left_out_of_the_decision() -> None:
    best, gold, judged = stage2_frames()
    # Only the judges are reliable: the gold RM's disagreement on b counts for nothing, but the
    # judges' reliable vote against b and c still discards them.
    decisions = gated_stage2_decisions(best, gold, judged, 3, trust(CHANCE, CHANCE, GOOD), recycle=False)
    b = dict(decisions.filter(pl.col("filter") == "B").select("pair_id", "decision").iter_rows())
    assert b == {"a": "abstain", "b": "discard", "c": "discard", "d": "keep"}


def test_no_flip_without_a_noise_rate() -> None:
    best, gold, judged = stage2_frames()
    decisions = gated_stage2_decisions(best, gold, judged, 3, trust(GOOD, GOOD, GOOD, prior=None),
                                       recycle=True)
    assert "flip" not in set(decisions["decision"])


def test_flip_precision_follows_the_evidence_and_the_prior() -> None:
    rng = np.random.default_rng(0)
    strong = rng.normal(4.0, 1.0, 400)  # calibrated log-LRs of right labels in gold orientation
    precise = flip_precision(strong, 0.2, 0.8)
    assert precise["value"] is not None and precise["value"] > 0.9
    weak = rng.normal(0.2, 1.0, 400)
    weak_precision = flip_precision(weak, 0.2, 0.8)["value"]
    assert weak_precision is None or weak_precision < 0.3  # what little it would flip is mostly right
