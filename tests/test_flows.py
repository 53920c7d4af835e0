"""The curate flow end to end on real data, and its resumability after SIGKILL at several points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.store import Workspace
from tests import flow_helpers
from tests.flow_helpers import write_config

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


def start_curate(config: Path, api_url: str, home: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PREFECT_API_URL=api_url, PREFECT_HOME=str(home),
               PREFECT_LOGGING_LEVEL="WARNING")
    return subprocess.Popen([sys.executable, "-m", "flows.cli.main", "curate", "--config", str(config)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_when(proc: subprocess.Popen[bytes], marker: Path, timeout_s: float = 1200.0) -> None:
    """SIGKILL the run as soon as `marker` exists (the run must not finish first)."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"run ended (rc {proc.returncode}) before {marker} appeared:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{marker} did not appear within {timeout_s} s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_runs_resume_to_the_same_export(
    curated_run: dict[str, Any], prefect_api: str, shared_raw: Path, tmp_path: Path
) -> None:
    config = write_config(shared_raw, tmp_path, "resumed")
    ws_path = tmp_path / "resumed"
    # Killed right after ingest, mid stage 1 (round 1's RM trained), mid stage 2 (gold RM scored).
    for marker in ("pool/_manifest.json", "rounds/1/steps/rm.json", "stage2/steps/score-gold.json"):
        kill_when(start_curate(config, prefect_api, tmp_path / "prefect"), ws_path / marker)
    assert not (ws_path / "stage2" / "summary.json").exists()
    final = start_curate(config, prefect_api, tmp_path / "prefect")
    out, _ = final.communicate(timeout=1800)
    assert final.returncode == 0, out.decode()[-3000:]
    assert "Rounds" in out.decode() and "report:" in out.decode()

    resumed = Workspace(str(ws_path))
    uninterrupted = Workspace(curated_run["config"].workspace)
    assert_no_duplicates(resumed)
    for name in ("curated", "gold", "silver", "decisions"):
        a = table(resumed, name).sort(UNIQUE_KEYS[name])
        b = table(uninterrupted, name).sort(UNIQUE_KEYS[name])
        assert a.equals(b), f"table {name} differs after resuming"
