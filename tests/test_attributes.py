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
    quarantine_pairs,
    read_attributes,
    validate_attributes,
)
from pipeline.store import Workspace
from schemas.attributes import TASK_CATEGORIES
from schemas.config.judges import AttributesConfig
from schemas.pair import POOL_SCHEMA
from tests.fixtures.judge_pairs import make_pair, sample_pairs, workspace_with_pairs
from tests.fixtures.vllm_server import TinyJudgeEngine, VLLMServer


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
    assert ws.row_count("quarantine") == len(ids)  # a pair that fails again is not quarantined twice
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


def test_a_pair_quarantined_again_is_not_added_twice(tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    records = {r.pair_id: r for r in sample_pairs()}
    bad = {ids[0]: ("guideline: Field required", '{"task_category": "math"}'),
           ids[1]: ("json: Invalid JSON", "{")}
    assert quarantine_pairs(ws, bad, records, "judge-model") == 2
    # The re-run fails on the same pairs (with other output): nothing new is written.
    again = {ids[0]: ("objectivity: Input should be 'objective' or 'subjective'", "{}"),
             ids[1]: ("json: Invalid JSON", "")}
    assert quarantine_pairs(ws, again, records, "judge-model") == 0
    # Another model's failure on the same pair is its own record.
    assert quarantine_pairs(ws, {ids[0]: bad[ids[0]]}, records, "other-model") == 1
    rows = ws.read("quarantine").to_pylist()
    assert len(rows) == 3
    assert {(r["field"], json.loads(r["raw"])["pair_id"]) for r in rows} == {
        ("guideline", ids[0]), ("json", ids[1])}


@pytest.mark.vllm
def test_a_refused_request_quarantines_its_pair_and_the_run_goes_on(
        vllm_server: VLLMServer, tiny_causal_lm: Path, tmp_path: Path) -> None:
    import httpx
    from transformers import AutoTokenizer

    from pipeline.judges.prompts import attributes_prompt

    # Characters the tiny tokenizer never saw cost two tokens each: this prompt is longer than
    # the served context, so the server answers 400.
    too_long = make_pair("\u0436" * 3000, "\u0436" * 3000, "\u0437" * 3000)
    context = httpx.get(f"{vllm_server.base_url}/models").json()["data"][0]["max_model_len"]
    tokens = AutoTokenizer.from_pretrained(str(tiny_causal_lm))(
        attributes_prompt(too_long, TASK_CATEGORIES), add_special_tokens=False)["input_ids"]
    assert len(tokens) > context
    pairs = [*sample_pairs()[:2], too_long]
    ws, ids = workspace_with_pairs(tmp_path / "ws", pairs)
    cfg = AttributesConfig(kind="openai", model=vllm_server.model, endpoints=[vllm_server.base_url],
                           max_tokens=8, retries=1, concurrency=2)
    stats = generate_attributes(ws, cfg)
    assert (stats.generated, stats.quarantined) == (0, len(ids))
    quarantine = {json.loads(r["raw"])["pair_id"]: r for r in ws.read("quarantine").to_pylist()}
    refused = quarantine[too_long.pair_id]
    assert refused["field"] == "request"
    assert "refused by the server" in refused["reason"] and "context length" in refused["reason"]
    # Eight tokens cannot hold the JSON object: the other pairs fail validation, not the request.
    assert {quarantine[p]["field"] for p in ids[:2]} == {"json"}
    again = generate_attributes(ws, cfg)
    assert again.quarantined == len(ids) and ws.row_count("quarantine") == len(ids)
