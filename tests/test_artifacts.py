"""Prefect run pages: each round and stage 2 publish their table, decisions and trust; runs are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.artifacts import artifact_key, round_decisions_markdown, trust_markdown
from pipeline.store import Workspace
from tests import flow_helpers

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api


def test_trust_summary_prints_what_the_summary_holds() -> None:
    summary = {"round": 1, "trust": {"gold_eval": {"n": 40, "accuracy": 0.61234, "ci": [0.45, 0.75]},
                                     "judges": [{"name": "rules", "weight": 0.0}]}}
    text = trust_markdown("Round 1 trust", summary)
    assert "- **gold_eval**" in text and "  - **accuracy**: 0.6123" in text and "  - **ci**" in text
    assert "- **name**: rules" in text
    assert "no trust measurements" in trust_markdown("Round 1 trust", {"round": 1})
    decisions = round_decisions_markdown({"round": 2, "counts": {"gold": 3}, "gold_accuracy": None,
                                          "judges": {"verdicts": {"chosen": 5}}})
    assert "| gold | 3 |" in decisions and "| chosen | 5 |" in decisions


def test_artifact_keys_are_what_prefect_accepts(tmp_path: Path) -> None:
    assert artifact_key(Workspace(tmp_path / "My_Run.2"), "round-1-trust") == "my-run-2-round-1-trust"


@pytest.mark.slow
def test_a_curate_run_publishes_round_stage2_and_report_artifacts(curated_run: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    ws = Workspace(curated_run["config"].workspace)
    prefix = artifact_key(ws, "")
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))
        by_key: dict[str, Any] = {}
        for artifact in sorted(found, key=lambda a: a.created):
            by_key[artifact.key] = artifact  # the latest version of each key
        expected = {"rounds": "table", "round-1-decisions": "markdown", "round-1-trust": "markdown",
                    "round-2-decisions": "markdown", "round-2-trust": "markdown",
                    "stage2-decisions": "markdown", "stage2-trust": "markdown",
                    # Prefect stores link artifacts as markdown links
                    "report": "markdown", "gold-accuracy-plot": "markdown",
                    "pool-composition-plot": "markdown"}
        for what, kind in expected.items():
            artifact = by_key.get(prefix + what)
            assert artifact is not None, f"no artifact {prefix + what}; have {sorted(by_key)}"
            assert artifact.type == kind and artifact.flow_run_id is not None
        rounds_table = by_key[prefix + "rounds"].data
        assert [row["round"] for row in _rows(rounds_table)] == ["1", "2", "stage 2"]
        assert "| filter | decision | pairs |" in by_key[prefix + "stage2-decisions"].data
        assert "Stage 2 trust" in by_key[prefix + "stage2-trust"].data
        assert by_key[prefix + "report"].data.endswith("report/report.html)")
        assert by_key[prefix + "gold-accuracy-plot"].data.endswith("report/gold_accuracy.png)")
        round_run = client.read_flow_run(by_key[prefix + "round-1-decisions"].flow_run_id)
        curate_run = client.read_flow_run(by_key[prefix + "stage2-decisions"].flow_run_id)
    name = Workspace(curated_run["config"].workspace).root.rsplit("/", 1)[-1]
    assert round_run.name == f"stage1 config @ {name}"
    assert curate_run.name == f"curate config @ {name}"


def _rows(data: Any) -> list[dict[str, Any]]:
    import json

    return json.loads(data) if isinstance(data, str) else data
