"""Stage 2 as partition tasks: the same decisions on a local Dask cluster as on the local runner,
scoring and judging by pool partition, and receipts that carry counts, never id lists."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect import flow

from flows.runners import make_task_runner
from pipeline.parts import Receipt
from pipeline.score_stage import ScoreStage
from pipeline.stage import plan_partitions
from pipeline.stage2_stage import (
    CANDIDATE,
    CANDIDATES,
    CANDIDATES_PLAN,
    Route,
    candidate_partitions,
    candidate_rows,
    route_cutoff,
)
from pipeline.store import Workspace
from schemas.labels import SCORES_SCHEMA
from tests import flow_helpers

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api

DECISION_KEY = ["pair_id", "filter", "round"]
PART_KEYS = {"file", "rows", "sha256", "bytes", "bounds"}  # bounds: the round column's [min, max]


def _table(ws: Workspace, name: str) -> pl.DataFrame:
    return pl.from_arrow(ws.read(name))  # type: ignore[return-value]


def _no_id_lists(receipts: list[Receipt]) -> None:
    """A receipt is counts and part entries: no value lists pairs, and it stays small."""
    for receipt in receipts:
        assert len(json.dumps(receipt, default=str)) < 2_000, receipt
        for key, value in receipt.items():
            if key == "parts":
                assert all(set(part) <= PART_KEYS for part in value), value
            else:
                assert not isinstance(value, list | tuple | set), (key, value)


def _before_decisions(source: str, target: Path) -> Workspace:
    """A copy of a finished run as stage 2 found it before its candidates and decisions: the RMs'
    scores, the judgments and the evidence measured on evaluation gold stay (their steps are done)."""
    shutil.copytree(source, target)
    ws = Workspace(str(target))
    for path in ("stage2/summary.json", "stage2/steps/candidates.json", "stage2/steps/judge.json",
                 CANDIDATES, CANDIDATES_PLAN, "decisions"):
        ws.remove(path)
    return ws


@pytest.mark.slow
def test_stage2_on_dask_decides_what_the_local_runner_decides(
    curated_run: dict[str, Any], dask_address: str, tmp_path: Path
) -> None:
    from flows.stage2 import stage2_flow

    config = curated_run["config"]
    original = Workspace(config.workspace)  # the session's run: stage 2 on the local runner
    ws = _before_decisions(config.workspace, tmp_path / "dask")
    copy = config.model_copy(update={"workspace": ws.uri})
    summary = stage2_flow.with_options(task_runner=make_task_runner("dask", address=dask_address))(copy)
    decided = _table(ws, "decisions").sort(DECISION_KEY)
    assert decided.equals(_table(original, "decisions").sort(DECISION_KEY))
    local = original.read_json("stage2/summary.json")
    assert json.loads(json.dumps(summary, default=str)) == local
    selected = Workspace(str(tmp_path / "dask")).read_json("stage2/steps/candidates.json")
    assert selected["partitions"] >= 2 and selected["candidates"] == local["candidates"]
    assert selected["worker_pids"] and os.getpid() not in selected["worker_pids"]
    # Every candidate is in the table once, in the partition whose pool rows hold it.
    ws = Workspace(str(tmp_path / "dask"))
    table = _table(ws, CANDIDATES)
    assert table["pair_id"].n_unique() == table.height
    assert table.filter(pl.col("role") == CANDIDATE).height == local["candidates"]
    assert table["partition"].n_unique() <= selected["partitions"]


@pytest.mark.slow
def test_scoring_runs_as_pool_partition_tasks_on_dask_workers(
    curated_run: dict[str, Any], dask_address: str, tmp_path: Path
) -> None:
    from flows.loop_state import active_ids
    from flows.partition_tasks import run_partitions
    from flows.scoring import score_partition_task, score_partitions

    shutil.copytree(curated_run["config"].workspace, tmp_path / "ws")
    ws = Workspace(str(tmp_path / "ws"))
    stage = ScoreStage("rounds/1/rm", 90, "rm")

    @flow(task_runner=make_task_runner("dask", address=dask_address))
    def on_dask() -> tuple[dict[str, Any], list[Receipt]]:
        done = score_partitions(ws, stage, rows_per_partition=20, max_parallel=2)
        # A second pass finds every pair scored and scores none; its receipts are counts only.
        again, _ = run_partitions(ws, score_partition_task, stage, plan_partitions(ws, 20), max_parallel=4)
        return done, again

    @flow(task_runner=make_task_runner("local"))
    def on_threads() -> dict[str, Any]:
        return score_partitions(ws, ScoreStage("rounds/1/rm", 91, "rm"), rows_per_partition=1_000)

    sharded, again = on_dask()
    local = on_threads()
    pool = active_ids(ws).height
    assert sharded["shards"] == len(plan_partitions(ws, 20)) >= 2 and local["shards"] == 1
    assert sharded["scored"] == local["scored"] == pool
    assert sharded["worker_pids"] and os.getpid() not in sharded["worker_pids"]
    assert sum(r["scored"] for r in again) == 0 and sum(r["already_scored"] for r in again) == pool
    _no_id_lists(again)
    scores = pl.from_arrow(ws.read("scores", schema=SCORES_SCHEMA))
    on_workers = scores.filter(pl.col("round") == 90).sort("pair_id")  # type: ignore[union-attr]
    in_process = scores.filter(pl.col("round") == 91).sort("pair_id")  # type: ignore[union-attr]
    assert on_workers["pair_id"].to_list() == in_process["pair_id"].to_list()
    assert (on_workers["p"] - in_process["p"]).abs().max() < 1e-5


@pytest.mark.slow
def test_stage2_judging_runs_as_partition_tasks_and_judges_as_the_local_runner(
    curated_run: dict[str, Any], dask_address: str, tmp_path: Path
) -> None:
    from flows.judging import Stage2Judging, judge_partitions
    from flows.labeling import judge_configs
    from flows.partition_tasks import run_partitions, stage2_partition_task
    from flows.stage2 import GOLD_RM_MODEL
    from flows.trust import per_judge_verdicts
    from pipeline.stage2_stage import DecideStage

    config = curated_run["config"]
    shutil.copytree(config.workspace, tmp_path / "ws")
    ws = Workspace(str(tmp_path / "ws"))
    best = curated_run["result"]["stage2"]["best_round"]
    judges = judge_configs(config, "stage2/gold-rm")
    models = tuple(j for j in judges if j.kind != "rule")
    rules = tuple(j for j in judges if j.kind == "rule")
    route = Route(0.5)

    def judging(round_: int) -> Stage2Judging:
        return Stage2Judging(models, rules, config.embed, round_, 7, best, "rm", route)

    @flow(task_runner=make_task_runner("dask", address=dask_address))
    def on_dask() -> tuple[dict[str, Any], list[Receipt]]:
        done = judge_partitions(ws, judging(95), max_parallel=4)
        stage2_round = curated_run["result"]["stage2"]["round"]  # the round of the gold RM's scores
        decide = DecideStage(stage2_round, best, "rm", GOLD_RM_MODEL, route, _abstaining(),
                             tuple(j.name for j in judges))
        receipts, _ = run_partitions(ws, stage2_partition_task, decide, candidate_partitions(ws),
                                     max_parallel=4)
        for part in (p for r in receipts for p in r["parts"]):
            ws.remove(f"decisions/{part['file']}")
        return done, receipts

    @flow(task_runner=make_task_runner("local"))
    def on_threads() -> dict[str, Any]:
        return judge_partitions(ws, judging(96), max_parallel=1)

    sharded, receipts = on_dask()
    local = on_threads()
    candidates = sum(candidate_rows(ws, p.index, CANDIDATE).height for p in candidate_partitions(ws))
    assert sharded["shards"] == local["shards"] == len(candidate_partitions(ws)) >= 2
    assert sharded["worker_pids"] and os.getpid() not in sharded["worker_pids"]
    assert local["worker_pids"] == [os.getpid()]
    assert sharded["judged"] == local["judged"] > 0
    assert sharded["rule_checked"] == local["rule_checked"]
    assert sharded["judgments_written"] == local["judgments_written"] > 0
    _no_id_lists(receipts)
    assert sum(r["examined"] for r in receipts) == candidates
    ids = _table(ws, CANDIDATES).filter(pl.col("role") == CANDIDATE)["pair_id"].to_list()
    names = [j.name for j in judges]
    on_workers = per_judge_verdicts(ws, names, ids, 95).sort(["pair_id", "judge"])
    in_process = per_judge_verdicts(ws, names, ids, 96).sort(["pair_id", "judge"])
    assert on_workers.height and on_workers.equals(in_process)


def _abstaining() -> Any:
    """Gates with no reliable evidence: every decision abstains."""
    from pipeline.gates import FEATURES, Evidence, Trust

    chance = {"value": 0.5, "low": 0.4, "high": 0.6, "n": 100}
    return Trust({f: Evidence(f, chance, False) for f in FEATURES}, {}, None, 0.6, 0.8)


def test_the_routing_cutoff_sends_the_judges_the_first_max_judged_pairs_by_p(tmp_path: Path) -> None:
    """Filter A's cap over partitions: the pairs routed are exactly the first max_judged of the
    routed pairs sorted by (p, pair_id), as one sorted list of every candidate gives them."""
    from pipeline.parts import commit_keyed_parts, write_part
    from pipeline.stage2_stage import CANDIDATES_SCHEMA

    ws = Workspace(str(tmp_path / "ws"))
    ids = [f"{i:032x}" for i in range(60)]
    p = [round((i * 37 % 60) / 60, 2) for i in range(60)]  # repeated values: ties broken by pair_id
    frame = pl.DataFrame({"pair_id": ids, "source": ["s"] * 60, "role": [CANDIDATE] * 60,
                          "partition": [i // 20 for i in range(60)]})
    parts = [write_part(ws, CANDIDATES, part.to_arrow(), CANDIDATES_SCHEMA)
             for part in frame.partition_by("partition", maintain_order=True)]
    commit_keyed_parts(ws, CANDIDATES, parts, CANDIDATES_SCHEMA, "pair_id")
    scores = pl.DataFrame({"pair_id": ids, "round": [1] * 60, "model": ["rm"] * 60, "r_chosen": [0.0] * 60,
                           "r_rejected": [0.0] * 60, "p": p})
    ws.append("scores", scores, schema=SCORES_SCHEMA)
    best = pl.DataFrame({"pair_id": ids, "p": p})
    for cap in (0, 1, 7, 20, 29, 100):
        expected = best.filter(pl.col("p") <= 0.5).sort(["p", "pair_id"]).head(cap)["pair_id"].sort()
        route = Route(0.5, route_cutoff(ws, [0, 1, 2], 1, "rm", 0.5, cap))
        routed = pl.concat([route.to_judges(best.filter(pl.col("pair_id").is_in(
            candidate_rows(ws, index)["pair_id"]))) for index in (0, 1, 2)])["pair_id"].sort()
        assert routed.to_list() == expected.to_list(), cap


@pytest.mark.slow
def test_the_noise_rate_is_counted_by_partition_tasks_and_does_not_depend_on_the_runner(
    curated_run: dict[str, Any], dask_address: str
) -> None:
    from flows.round_steps import RM_MODEL
    from flows.stage2_trust import noise_by_partition
    from pipeline.stage2_stage import candidate_log_lr_counts
    from pipeline.trust import noise_by_source_counts

    ws = Workspace(curated_run["config"].workspace)  # read only
    best = curated_run["result"]["stage2"]["best_round"]
    partitions = [p.index for p in candidate_partitions(ws)]
    assert len(partitions) >= 2

    @flow(task_runner=make_task_runner("dask", address=dask_address))
    def on_dask() -> dict[str, Any]:
        return noise_by_partition(ws, partitions, best, RM_MODEL, 1.5)

    sharded = on_dask()
    in_process = noise_by_partition(ws, partitions, best, RM_MODEL, 1.5)  # no flow: here, one by one
    whole = candidate_log_lr_counts(ws, partitions, best, RM_MODEL, 1.5)
    assert sharded == in_process == {k: v.to_dict() for k, v in noise_by_source_counts(whole).items()}
    assert sharded["all"]["n"] == int(whole["n"].sum()) > 0
    assert sharded["all"]["low"] <= sharded["all"]["value"] <= sharded["all"]["high"]
