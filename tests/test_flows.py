"""The curate flow end to end on real data; a finished run re-run adds nothing.

Killed and resumed runs are in tests/test_faults.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.store import Workspace
from tests import flow_helpers

# The session's small curation run and Prefect test server, shared with the runner tests.
curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
UNIQUE_KEYS = {
    "pool": ["pair_id"],
    "gold": ["pair_id"],
    "silver": ["pair_id"],
    "attributes": ["pair_id"],
    "scores": ["pair_id", "round", "model"],
    "judgments": ["pair_id", "judge", "sample", "order", "round"],
    "decisions": ["pair_id", "filter", "round"],
    "curated": ["pair_id"],
}


def table(ws: Workspace, name: str) -> pl.DataFrame:
    return pl.from_arrow(ws.read(name))  # type: ignore[return-value]


def assert_no_duplicates(ws: Workspace) -> None:
    for name, key in UNIQUE_KEYS.items():
        frame = table(ws, name)
        assert frame.height > 0, f"table {name} is empty"
        assert frame.select(key).is_duplicated().sum() == 0, f"duplicate rows in {name} by {key}"


def test_curate_runs_every_stage_on_real_data(curated_run: dict[str, Any]) -> None:
    config, result = curated_run["config"], curated_run["result"]
    ws = Workspace(config.workspace)
    assert_no_duplicates(ws)
    gold = table(ws, "gold")
    # The seed batch is labeled by the HH-RLHF crowdworkers' own labels: human sources only.
    assert gold.height == config.loop.seed_size
    assert set(gold["origin"]) == {"source"}
    human_ids = set(table(ws, "pool").filter(pl.col("label_source") == "human")["pair_id"])
    assert set(gold["pair_id"]) <= human_ids

    for round_ in (1, 2):
        summary = ws.read_json(f"rounds/{round_}/summary.json")
        assert summary["round"] == round_
        assert 0.0 <= summary["gold_accuracy"] <= 1.0
        assert summary["gold_accuracy_per_category"]
        # Retrieval starts from the train part of gold only; the eval part only measures.
        split = table(ws, "gold_split")
        train_ids = set(split.filter(pl.col("part") == "train")["pair_id"])
        assert summary["retrieval"]["queries"] == len(train_ids)
        assert summary["gold_eval"]["accuracy"]["n"] == split.filter(pl.col("part") == "eval").height
        assert 0 < summary["retrieval"]["retrieved"] <= config.loop.retrieve_max
        assert summary["judges"]["judged"] > 0
        counts = summary["counts"]
        assert counts["gold"] == config.loop.seed_size and counts["silver"] > 0
        assert ws.exists(f"rounds/{round_}/rm/rm.json")
    # Retrieved pairs never include a pair labeled before the round.
    retrieved_2 = set(table(ws, "rounds/2/retrieved")["pair_id"])
    silver = table(ws, "silver")
    assert not retrieved_2 & set(silver.filter(pl.col("round") == 1)["pair_id"])
    assert not retrieved_2 & set(gold["pair_id"])

    stage2 = result["stage2"]
    decisions = table(ws, "decisions")
    candidates = stage2["candidates"]
    assert decisions.filter(pl.col("filter") == "A").height == candidates
    assert decisions.filter(pl.col("filter") == "B").height == candidates
    assert (decisions["reason"].str.len_chars() > 0).all()
    relabeled = decisions.filter((pl.col("filter") == "A") & (pl.col("decision") == "relabel"))
    assert relabeled.height == stage2["relabeled"]
    assert sum(stage2["outcome"].values()) == candidates

    curated = table(ws, "curated")
    assert curated.height == result["selected"] == result["export"]["rows"]
    expected = gold.height + silver.filter(pl.col("verdict").is_in(["chosen", "rejected"])).height \
        + stage2["outcome"].get("keep", 0) + stage2["outcome"].get("flip", 0) \
        + stage2["outcome"].get("abstain", 0)
    assert curated.height == expected

    report = json.loads(ws.read_bytes("report/report.json"))
    assert [row["round"] for row in report["table"]] == ["1", "2", "stage 2"]
    for png in ("report/gold_accuracy.png", "report/pool_composition.png"):
        assert ws.read_bytes(png).startswith(b"\x89PNG")
    assert "<table>" in ws.read_bytes("report/report.html").decode()


def test_rerun_of_a_finished_run_adds_nothing(curated_run: dict[str, Any]) -> None:
    from flows.curate import curate_flow

    ws = Workspace(curated_run["config"].workspace)
    before = {name: ws.row_count(name) for name in UNIQUE_KEYS}
    curated_before = table(ws, "curated").sort("pair_id")
    curate_flow(curated_run["config"])
    assert {name: ws.row_count(name) for name in UNIQUE_KEYS} == before
    assert table(ws, "curated").sort("pair_id").equals(curated_before)


