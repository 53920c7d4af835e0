"""The meter's workspace steps: the noised copy, and per-filter detection read from loop tables
whose outcome is constructed by hand."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.quality.meter import detection_report, injected, noisy_copy, truth_labels
from pipeline.quality.noise import NoiseConfig
from pipeline.quality.world import WorldConfig, generate_world
from pipeline.store import Workspace
from schemas.labels import DECISIONS_SCHEMA, LABELS_SCHEMA, SCORES_SCHEMA


@pytest.fixture()
def copy(tmp_path: Path) -> tuple[Workspace, list[str]]:
    world = generate_world(WorldConfig(pairs=60, heldout=0, seed=2))
    gold = [r.pair_id for r in world.pool[:10]]
    ws = Workspace(tmp_path / "copy")
    noisy_copy(world.pool_table(), ws, NoiseConfig(flip_share=0.3, seed=1), gold_ids=gold)
    return ws, gold


def test_noisy_copy_keeps_the_gold_seed_human_and_untouched(copy: tuple[Workspace, list[str]]) -> None:
    ws, gold = copy
    pool = pl.from_arrow(ws.read("pool"))
    humans = pool.filter(pl.col("label_source") == "human")["pair_id"].to_list()
    assert sorted(humans) == sorted(gold)  # untouched ids: the seed was not flipped
    assert set(pool["label_source"].unique()) == {"human", "ai"}
    truth = injected(ws)
    assert truth.filter(pl.col("flipped")).height == 15  # 30% of the 50 unprotected pairs
    assert truth_labels(ws).filter(pl.col("verdict") == "rejected").height == 15


def test_noisy_copy_is_rerunnable_but_never_mixes_settings(copy: tuple[Workspace, list[str]]) -> None:
    ws, gold = copy
    pool = ws.read("pool")
    before = ws.manifest("pool")
    with pytest.raises(ValueError, match="other settings"):
        noisy_copy(pool, ws, NoiseConfig(flip_share=0.1, seed=1), gold_ids=gold)
    assert ws.manifest("pool") == before


def _labels(ids: list[str], verdicts: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"pair_id": ids, "verdict": verdicts, "origin": ["judges"] * len(ids),
                         "round": [1] * len(ids), "detail": [""] * len(ids)},
                        schema={"pair_id": pl.String, "verdict": pl.String, "origin": pl.String,
                                "round": pl.Int32, "detail": pl.String})


def _decisions(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame({"pair_id": [r[0] for r in rows], "stage": ["stage2"] * len(rows),
                         "filter": [r[1] for r in rows], "decision": [r[2] for r in rows],
                         "reason": [""] * len(rows), "round": [3] * len(rows)},
                        schema={"pair_id": pl.String, "stage": pl.String, "filter": pl.String,
                                "decision": pl.String, "reason": pl.String, "round": pl.Int32})


def test_detection_report_scores_each_filter_against_the_recorded_flips(
        copy: tuple[Workspace, list[str]]) -> None:
    ws, _ = copy
    truth = injected(ws).filter(~pl.col("protected"))
    flipped = truth.filter(pl.col("flipped"))["pair_id"].to_list()
    clean = truth.filter(~pl.col("flipped"))["pair_id"].to_list()
    # stage 1: the judges labeled 4 flipped pairs (3 caught) and 6 clean ones (1 wrongly flagged)
    ws.append("silver", _labels(flipped[:4] + clean[:6], ["rejected"] * 3 + ["chosen"] * 6 + ["rejected"]),
              schema=LABELS_SCHEMA)
    # stage 2 over the remaining 40: filter B discards 8 of the 11 flips and 2 clean pairs
    rest_flipped, rest_clean = flipped[4:], clean[6:]
    rows = [(p, "B", "discard") for p in rest_flipped[:8] + rest_clean[:2]]
    rows += [(p, "B", "keep") for p in rest_flipped[8:] + rest_clean[2:]]
    rows += [(p, "A", "relabel") for p in rest_flipped] + [(p, "A", "drop") for p in rest_clean]
    rows += [(p, "recycle", "flip") for p in rest_flipped[:8]]
    rows += [(p, "recycle", "drop") for p in rest_clean[:2]]
    ws.append("decisions", _decisions(rows), schema=DECISIONS_SCHEMA)
    gold_p = [0.1] * len(rest_flipped) + [0.9] * len(rest_clean)
    ws.append("scores", pl.DataFrame({
        "pair_id": rest_flipped + rest_clean, "round": [3] * 40, "model": ["gold-rm"] * 40,
        "r_chosen": [0.0] * 40, "r_rejected": [0.0] * 40, "p": gold_p}), schema=SCORES_SCHEMA)

    report = detection_report(ws, stage2_round=3)
    assert (report["pairs"], report["flipped"], report["unseen"]) == (50, 15, 0)
    silver = report["filters"]["stage1 judges (silver)"]
    assert (silver["pairs"], silver["true_pos"], silver["false_pos"]) == (10, 3, 1)
    combined = report["filters"]["filter B (stage 2 combined)"]
    counts = (combined["pairs"], combined["true_pos"], combined["false_pos"], combined["false_neg"])
    assert counts == (40, 8, 2, 3)
    assert combined["precision"] == pytest.approx(0.8)
    assert combined["clean_discard_rate"] == pytest.approx(2 / 29)
    assert report["filters"]["best RM (filter A)"]["f1"] == pytest.approx(1.0)
    assert report["filters"]["gold RM"]["recall"] == pytest.approx(1.0)
    assert report["filters"]["recycled flips"]["precision"] == pytest.approx(1.0)
    whole = report["filters"]["whole loop"]
    assert (whole["true_pos"], whole["false_pos"], whole["false_neg"]) == (11, 3, 4)
    # curated: silver kept 6 (1 wrong: the missed flip) + 4 relabeled (1 wrong: the clean pair
    # flagged) + B kept 30 (3 missed flips) + 8 recycled (all right)
    curated = report["curated"]
    assert (curated["kept"], curated["relabeled"]) == (36, 12)
    assert (curated["wrong_kept"], curated["wrong_relabeled"]) == (4, 1)
    assert report["recycling"]["errors_fixed"] == 8 and report["recycling"]["errors_introduced"] == 2


def test_detection_report_needs_a_noised_copy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a noised copy"):
        detection_report(Workspace(tmp_path / "plain"), stage2_round=None)
