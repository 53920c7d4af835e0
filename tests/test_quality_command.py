"""`synpref bench world` and `synpref bench quality` end to end on a small world: the real loop
(Prefect flows, embedding-head RMs, the gold-RM judge), JSON and PNG written, figures sane."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from pipeline.quality.world import WorldConfig, generate_world
from pipeline.store import Workspace
from schemas.pair import POOL_SCHEMA

SMALL_LOOP = """
[[judges]]
name = "gold-rm"
kind = "rm-workspace"

[rm]
epochs = 3

[loop]
iterations = 1
silver_seed_size = 15
retrieve_max = 10
"""

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _patient_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "synpref.toml"
    path.write_text(SMALL_LOOP)
    return path


def test_bench_world_runs_the_loop_and_reports_every_condition(tmp_path: Path) -> None:
    out = tmp_path / "world"
    result = CliRunner().invoke(app, ["bench", "world", "--config", str(_config(tmp_path)), "--seeds", "1",
                                      "--pairs", "60", "--heldout", "30", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench-world.json").read_text())
    assert (out / "bench-world.png").stat().st_size > 0
    assert set(report["heldout_accuracy"]) == {"raw noisy pool", "curated subset", "random subset",
                                               "curated, kept labels only", "noise-free pool"}
    for interval in report["heldout_accuracy"].values():
        assert 0.0 <= interval["low"] <= interval["mean"] <= interval["high"] <= 1.0
    assert report["train_pairs"]["random subset"] == report["train_pairs"]["curated subset"]
    assert report["train_pairs"]["noise-free pool"] == 60
    assert "stage1 judges (silver)" in report["filters"]
    assert set(report["targets"]) and "Held-out RM accuracy" in result.output
    # the noise really is the one the command asked for: 25% of the 48 non-seed pairs, plus bias
    seed_ws = Workspace(out / "seed-0")
    settings = seed_ws.read_json("quality/settings.json")
    assert (settings["flip_share"], settings["length_bias"], settings["gold_seed"]) == (0.25, 0.1, 12)


def test_bench_quality_meters_any_workspace(tmp_path: Path) -> None:
    world = generate_world(WorldConfig(pairs=60, heldout=0, seed=4))
    source = Workspace(tmp_path / "source")
    source.append("pool", world.pool_table(), schema=POOL_SCHEMA)
    out = tmp_path / "metered"
    result = CliRunner().invoke(app, ["bench", "quality", "--workspace", str(tmp_path / "source"),
                                      "--config", str(_config(tmp_path)), "--flip-share", "0.2",
                                      "--seed-size", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "quality" / "bench-quality.json").read_text())
    assert (report["pairs"], report["flipped"]) == (48, round(0.2 * 48))
    assert report["filters"]["whole loop"]["pairs"] > 0
    assert (out / "quality" / "bench-quality.png").exists()
    assert "Flip detection" in result.output
    assert not os.path.exists(tmp_path / "source" / "quality")  # the source pool is never touched


def test_bench_quality_on_a_workspace_without_a_pool_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "quality", "--workspace", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "has no pool table" in " ".join(result.output.split())
