"""Stage 2 on the image world: rule verifiers that earned a vote check every candidate."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.quality import embedded_default_config
from flows.quality_image import COMBINED, image_world_seed_run, pair_outcomes, split_detection
from pipeline.quality.world_image import ImageWorldConfig
from pipeline.store import Workspace
from tests import flow_helpers

prefect_api = flow_helpers.prefect_api
pytestmark = pytest.mark.slow


def test_verifiable_flips_are_caught_whatever_filter_a_routes(prefect_api: str, tmp_path: Path) -> None:
    out = str(tmp_path / "seed-0")
    world = ImageWorldConfig(pairs=300, heldout=0, gold_share=0.2, seed=0)
    config = embedded_default_config(300)
    # One stage-1 round: stage 2's routing and the rules' checks are what this test is about.
    config = config.model_copy(update={"loop": config.loop.model_copy(update={"iterations": 1})})
    image_world_seed_run(config, world, out, flip_share=0.25)
    ws = Workspace(out)
    stage2 = ws.read_json("stage2/summary.json")
    judged = ws.read_json("stage2/steps/judge.json")
    assert "rules" in judged["voting_judges"], stage2["trust"]
    # Filter A sends only part of the candidates to the judges; the rules see all of them.
    assert stage2["rule_checked"] == stage2["candidates"] > stage2["relabeled"]
    assert judged["rule_checked"] > 0
    verifiable = split_detection([pair_outcomes(ws)], n_boot=200)["verifiable"][COMBINED]
    assert verifiable["pairs"] > 0
    assert verifiable["recall"]["mean"] == 1.0 and verifiable["precision"]["mean"] == 1.0
