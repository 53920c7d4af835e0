"""The attribute 5-tuple: keyword heuristics on real data, LLM generation with quarantine on vLLM."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.attributes import (
    PREVERIFICATIONS_SCHEMA,
    generate_attributes,
    heuristic_attributes,
    read_attributes,
    validate_attributes,
)
from pipeline.store import Workspace
from schemas.attributes import TASK_CATEGORIES
from schemas.config.judges import AttributesConfig
from schemas.pair import POOL_SCHEMA
from tests.fixtures.judge_pairs import sample_pairs, workspace_with_pairs
from tests.fixtures.vllm_server import TinyJudgeEngine


def test_heuristic_attributes_follow_the_prompt() -> None:
    math_pair, _, _, haiku, bomb, summary = sample_pairs()
    got = {name: heuristic_attributes(p) for name, p in
           [("math", math_pair), ("haiku", haiku), ("bomb", bomb), ("summary", summary)]}
    assert (got["math"].task_category, got["math"].objectivity.value) == ("math", "objective")
    assert (got["haiku"].task_category, got["haiku"].objectivity.value) == ("writing", "subjective")
    assert (got["bomb"].task_category, got["bomb"].controversiality.value) == ("safety", "high")
    assert got["summary"].task_category == "summarization"
    assert "search" not in got["math"].guideline.lower()


def test_heuristic_attributes_on_real_pairs_and_rerun_skips(shared_raw: Path, tmp_path: Path) -> None:
    from pipeline.sources import load_pairs

    loaded = load_pairs(str(shared_raw / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"),
                        format="hh-rlhf", name="hh-rlhf/harmless-base", limit=80)
    ws = Workspace(tmp_path / "ws")
    ws.append("pool", loaded.pairs, unique_key="pair_id", schema=POOL_SCHEMA)
    n = ws.row_count("pool")
    stats = generate_attributes(ws, AttributesConfig(kind="heuristic"))
    assert (stats.generated, stats.quarantined) == (n, 0)
    table = read_attributes(ws)
    assert set(table["task_category"].to_list()) <= set(TASK_CATEGORIES)
    assert "safety" in table["task_category"].to_list()  # red-teaming prompts
    assert generate_attributes(ws, AttributesConfig(kind="heuristic")).skipped == n
    assert ws.row_count("attributes") == n


def test_validation_names_the_field() -> None:
    ok = json.dumps({"task_category": "math", "objectivity": "objective", "controversiality": "low",
                     "desired_attributes": ["correct"], "guideline": "Check the answer."})
    assert validate_attributes(ok)[0] is not None
    bad_category = ok.replace('"math"', '"poetry"')
    assert validate_attributes(bad_category) == (None, validate_attributes(bad_category)[1])
    assert validate_attributes(bad_category)[1].startswith("task_category:")
    assert validate_attributes(ok.replace('"low"', '"extreme"'))[1].startswith("controversiality:")
    assert validate_attributes('{"task_category": "math"')[0] is None


def test_unknown_kind_is_a_clear_error(tmp_path: Path) -> None:
    ws, _ = workspace_with_pairs(tmp_path / "ws")
    with pytest.raises(ValueError, match="unknown kind 'oracle'"):
        generate_attributes(ws, AttributesConfig(kind="oracle"))
    with pytest.raises(ValueError, match="needs `model`"):
        generate_attributes(ws, AttributesConfig(kind="vllm"))


@pytest.mark.vllm
def test_llm_attributes_invalid_output_is_retried_then_quarantined(
        tiny_judge_engine: TinyJudgeEngine, tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    settings = tiny_judge_engine.settings
    # Eight tokens cannot hold the JSON object: every attempt is cut off, so every pair is quarantined.
    cut = AttributesConfig(kind="vllm", model=tiny_judge_engine.model, max_tokens=8, retries=1,
                           max_model_len=settings["max_model_len"],
                           gpu_memory_utilization=settings["gpu_memory_utilization"],
                           enforce_eager=settings["enforce_eager"])
    stats = generate_attributes(ws, cut)
    assert (stats.generated, stats.retried, stats.quarantined) == (0, len(ids), len(ids))
    quarantine = ws.read("quarantine").to_pylist()
    assert {json.loads(r["raw"])["pair_id"] for r in quarantine} == set(ids)
    assert all("invalid after retries" in r["reason"] and r["source_file"].startswith("attributes:")
               for r in quarantine)
    # With room to finish, guided decoding yields schema-valid JSON or a quarantined reason, nothing else.
    # Objective pairs also get each response judged correct / incorrect.
    roomy = cut.model_copy(update={"max_tokens": 256, "preverify_objective": True})
    again = generate_attributes(ws, roomy)
    assert again.generated + again.quarantined == len(ids)
    attrs = read_attributes(ws)
    assert attrs.height == again.generated
    objective = set(attrs.filter(attrs["objectivity"] == "objective")["pair_id"].to_list())
    checked = ws.read("preverifications", schema=PREVERIFICATIONS_SCHEMA).to_pylist()
    assert {r["pair_id"] for r in checked} == objective
    assert again.preverified == len(objective)


def test_pool_helper_rejects_empty_workspace(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "empty")
    with pytest.raises(ValueError, match="no pool"):
        generate_attributes(ws, AttributesConfig())
    ws.append("pool", pa.Table.from_pylist([p.to_row() for p in sample_pairs()[:1]], schema=POOL_SCHEMA))
    assert generate_attributes(ws, AttributesConfig()).generated == 1
