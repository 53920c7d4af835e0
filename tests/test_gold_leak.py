"""No leak from evaluation gold: no RM trains on it, no judge sees it, no retrieval starts from it."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from pipeline.store import Workspace
from tests import flow_helpers

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api

pytestmark = pytest.mark.slow


def parts(ws: Workspace) -> tuple[set[str], set[str]]:
    split = pl.from_arrow(ws.read("gold_split"))
    assert isinstance(split, pl.DataFrame)
    return (set(split.filter(pl.col("part") == "train")["pair_id"]),
            set(split.filter(pl.col("part") == "eval")["pair_id"]))


def test_every_gold_pair_has_one_part_and_eval_is_about_a_third(curated_run: dict[str, Any]) -> None:
    ws = Workspace(curated_run["config"].workspace)
    train, evaluation = parts(ws)
    gold = set(pl.from_arrow(ws.read("gold", ["pair_id"]))["pair_id"])  # type: ignore[index]
    assert train | evaluation == gold and not train & evaluation
    share = curated_run["config"].loop.gold_eval_share
    assert len(evaluation) == round(share * len(gold))


def test_no_reward_model_trains_on_evaluation_gold(curated_run: dict[str, Any]) -> None:
    from flows.gold_parts import gold_part
    from pipeline.rm.training import labels_hash

    ws = Workspace(curated_run["config"].workspace)
    _, evaluation = parts(ws)
    silver = set(pl.from_arrow(ws.read("silver", ["pair_id"]))["pair_id"])  # type: ignore[index]
    assert not silver & evaluation
    train_hash = labels_hash(gold_part(ws, "train"))
    rm_dirs = [f"rounds/{r}/{name}" for r in (1, 2) for name in ("gold-rm", "rm")] + ["stage2/gold-rm"]
    for rm_dir in rm_dirs:
        trained = ws.read_json(f"{rm_dir}/train.json")
        # No checkpoint is selected on gold, and gold RMs train on exactly the train part.
        assert "gold" not in trained["data_hashes"], rm_dir
        if rm_dir.endswith("gold-rm"):
            assert trained["data_hashes"]["train"] == train_hash, rm_dir


def test_no_judge_example_or_retrieval_seed_comes_from_evaluation_gold(curated_run: dict[str, Any]) -> None:
    from flows.examples import gold_neighbours

    config = curated_run["config"]
    ws = Workspace(config.workspace)
    train, evaluation = parts(ws)
    pool = pl.from_arrow(ws.read("pool", ["pair_id"]))["pair_id"].to_list()  # type: ignore[index]
    shown = gold_neighbours(ws, config.embed, sorted(evaluation) + pool[:20], k=8)
    assert shown and all(set(examples) <= train for examples in shown.values())
    for round_ in (1, 2):
        retrieved = pl.from_arrow(ws.read(f"rounds/{round_}/retrieved"))
        assert set(retrieved["query_pair_id"]) <= train  # type: ignore[index]


def test_cross_fitted_judge_never_trains_or_selects_on_evaluation_gold(curated_run: dict[str, Any]) -> None:
    from pipeline.judges.crossfit import CrossFitRMJudge

    ws = Workspace(curated_run["config"].workspace)
    train, evaluation = parts(ws)
    judge = CrossFitRMJudge("pool-rm", "", ws=ws, folds=3)
    for fold in range(3):
        fitted, selection = judge.fold_data(fold)
        assert fitted and not {e.pair_id for e in fitted} & evaluation
        assert {e.pair_id for e in selection} == train


def test_round_summaries_report_evaluation_gold_with_a_ci(curated_run: dict[str, Any]) -> None:
    ws = Workspace(curated_run["config"].workspace)
    _, evaluation = parts(ws)
    for round_ in (1, 2):
        summary = ws.read_json(f"rounds/{round_}/summary.json")
        accuracy = summary["gold_eval"]["accuracy"]
        assert accuracy["n"] == len(evaluation)
        assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
        trust = summary["trust"]
        assert set(trust["judges"]) == {"gold-rm", "rules"}
        for measured in trust["judges"].values():
            assert measured["total"] == len(evaluation) and measured["weight"] >= 0.0
        # A 4-pair evaluation part can never be reliable: the loop must say so and abstain.
        assert trust["warnings"] and trust["silver"]["changed"] == 0
    stage2 = ws.read_json("stage2/summary.json")
    assert stage2["trust"]["labels"]["changed"] == 0
    assert any("abstained" in w for w in stage2["trust"]["warnings"])
