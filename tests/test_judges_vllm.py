"""LLM and reward-model judges on the real vLLM engine (CPU build here) with tiny local models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.judges import JudgeError, aggregate_votes, build_judges, judge_pairs
from pipeline.judges.base import LabeledExample
from pipeline.judges.reward_model import SequenceClassifierScorer
from pipeline.judges.vllm_offline import chat_prompt, label_token_ids
from schemas.config.judges import JudgeConfig
from schemas.labels import Verdict
from tests.fixtures.judge_pairs import make_pair, sample_pairs, workspace_with_pairs
from tests.fixtures.vllm_server import TinyJudgeEngine, VLLMServer, cpu_engine_env, free_port

pytestmark = pytest.mark.vllm
CHOICE = {"structured_outputs": {"choice": ["1", "2"]}}


def vllm_config(engine: TinyJudgeEngine, **overrides: object) -> JudgeConfig:
    fields: dict[str, object] = {"name": "tiny-vllm", **engine.settings, **overrides}
    return JudgeConfig(kind="vllm", model=engine.model, **fields)  # type: ignore[arg-type]


def transformers_margin(model_path: str, prompt: str) -> float:
    """(p1 - p2) / (p1 + p2) for Candidate 1 vs 2, from transformers on the same chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    ids = tok(chat_prompt(tok, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), dim=-1)
    id1, id2 = label_token_ids(tok)
    p1, p2 = math.exp(logprobs[id1]), math.exp(logprobs[id2])
    return (p1 - p2) / (p1 + p2)


def test_offline_engine_judges_both_orders_from_label_logprobs(
        tiny_judge_engine: TinyJudgeEngine, tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    judge = build_judges([vllm_config(tiny_judge_engine)])[0]
    stats = judge_pairs(ws, [judge], ids, round=1, seed=0)
    assert stats.judgments_written == 2 * len(ids) and stats.invalid == 0
    stored = pl.from_arrow(ws.read("judgments"))
    assert stored.group_by("pair_id").agg(pl.col("order").n_unique())["order"].to_list() == [2] * len(ids)
    for row in stored.iter_rows(named=True):
        assert -1.0 <= row["margin"] <= 1.0
        assert row["verdict"] == ("chosen" if row["margin"] >= 0 else "rejected")
    # The margin is the engine's label probabilities: transformers agrees on the same prompt.
    pair = sample_pairs()[3]
    request = judge.build_requests([pair], {}, {}, seed=0)[0]
    row = stored.filter((pl.col("pair_id") == pair.pair_id) & (pl.col("order") == request.order.value)).row(
        0, named=True)
    first = row["margin"] if request.order.value == "chosen_first" else -row["margin"]
    assert first == pytest.approx(transformers_margin(tiny_judge_engine.model, request.prompt), abs=0.05)


def test_self_consistency_samples_and_seeded_single_order(
        tiny_judge_engine: TinyJudgeEngine, tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    cfg = vllm_config(tiny_judge_engine, samples=3, temperature=1.0, both_orders=False)
    judge_pairs(ws, build_judges([cfg]), ids, round=2, seed=7)
    stored = pl.from_arrow(ws.read("judgments"))
    assert stored.height == 3 * len(ids)
    assert sorted(set(stored["sample"].to_list())) == [0, 1, 2]
    assert set(stored["raw_text"].to_list()) <= {"1", "2"}  # sampling is restricted to the labels
    assert stored["margin"].is_not_null().all()
    assert stored.group_by("pair_id").agg(pl.col("order").n_unique())["order"].max() == 1
    votes = aggregate_votes(stored)
    assert votes.height == len(ids)
    assert set(votes["verdict"].to_list()) <= {"chosen", "rejected", "tie"}


def test_long_prompts_with_examples_fit_the_context(tiny_judge_engine: TinyJudgeEngine) -> None:
    ids = [p.pair_id for p in sample_pairs()]
    shots = [LabeledExample(make_pair(f"Example question {i} " * 20, f"good answer {i} " * 20,
                                      f"bad answer {i} " * 20), Verdict.chosen) for i in range(8)]
    judge = build_judges([vllm_config(tiny_judge_engine, name="with-examples")])[0]
    out = judge.judge(sample_pairs()[:2], attributes={}, examples={ids[0]: shots}, round=1)
    assert len(out) == 4 and all(j.verdict != Verdict.invalid for j in out)


def test_openai_server_matches_the_offline_engine(
        vllm_server: VLLMServer, tiny_judge_engine: TinyJudgeEngine, tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    remote = JudgeConfig(name="served", kind="openai", model=vllm_server.model,
                         endpoints=[vllm_server.base_url], extra_body=CHOICE, concurrency=4)
    judge_pairs(ws, build_judges([remote, vllm_config(tiny_judge_engine)]), ids, round=1, seed=0)
    stored = pl.from_arrow(ws.read("judgments"))
    served = stored.filter(pl.col("judge") == "served").sort("pair_id", "order")
    local = stored.filter(pl.col("judge") == "tiny-vllm").sort("pair_id", "order")
    assert served.height == 2 * len(ids)
    assert set(served["raw_text"].to_list()) <= {"1", "2"}
    assert served["verdict"].to_list() == local["verdict"].to_list()
    assert np.allclose(served["margin"].to_numpy(), local["margin"].to_numpy(), atol=0.05)


def test_judge_command_shows_the_llm_judges_gold_examples(vllm_server: VLLMServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli.main import app
    from flows.loop_state import add_labels, label_rows

    ws, ids = workspace_with_pairs(tmp_path / "ws")
    add_labels(ws, "gold", label_rows(ids[:2], ["chosen", "rejected"], "human", 1))
    config = tmp_path / "synpref.toml"
    config.write_text(
        f'workspace = "{ws.uri}"\n[embed]\nbackend = "torch"\n[[judges]]\nname = "served"\n'
        f'kind = "openai"\nmodel = "{vllm_server.model}"\nendpoints = ["{vllm_server.base_url}"]\n'
        'examples = 1\nextra_body = {structured_outputs = {choice = ["1", "2"]}}\n', encoding="utf-8")
    pairs = tmp_path / "targets.txt"
    pairs.write_text("\n".join(ids[2:]), encoding="utf-8")
    runner = CliRunner()
    for round_, extra in ((1, ["--examples", "0"]), (2, [])):
        out = runner.invoke(app, ["judge", "-c", str(config), "--pairs", str(pairs), "--round", str(round_),
                                  *extra])
        assert out.exit_code == 0, out.output
    stored = pl.from_arrow(ws.read("judgments")).sort("pair_id", "order")
    assert stored["margin"].is_not_null().all()  # every prompt fit the context
    bare = stored.filter(pl.col("round") == 1)["margin"].to_numpy()
    shown = stored.filter(pl.col("round") == 2)["margin"].to_numpy()
    assert len(bare) == len(shown) == 2 * len(ids[2:])
    # The second run's prompts carry each target's nearest gold pair as a worked example (one
    # keeps every prompt within the tiny server's context), so the label probabilities move.
    assert np.all(np.abs(bare - shown) > 1e-6)


def test_a_dead_endpoint_shares_no_load_and_loses_nothing(vllm_server: VLLMServer, tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    cfg = JudgeConfig(name="served", kind="openai", model=vllm_server.model, extra_body=CHOICE,
                      endpoints=[dead, vllm_server.base_url], retries=2, concurrency=2)
    stats = judge_pairs(ws, build_judges([cfg]), ids, round=1, seed=0)
    assert stats.judgments_written == 2 * len(ids) and stats.invalid == 0


def test_timeouts_fail_clearly_and_a_rerun_finishes_the_rest(vllm_server: VLLMServer, tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    good = JudgeConfig(name="served", kind="openai", model=vllm_server.model,
                       endpoints=[vllm_server.base_url], extra_body=CHOICE)
    judge_pairs(ws, build_judges([good]), ids[:2], round=1, seed=0)
    impatient = good.model_copy(update={"timeout_s": 0.001, "retries": 1})
    with pytest.raises(JudgeError, match="failed after 2 attempts: APITimeoutError"):
        judge_pairs(ws, build_judges([impatient]), ids, round=1, seed=0)
    # The first two pairs are still there; a request that beat the 1 ms timeout may have added a
    # pair of its own, which is kept too.
    before = ws.row_count("judgments")
    assert before >= 4 and before % 2 == 0
    again = judge_pairs(ws, build_judges([good]), ids, round=1, seed=0)
    assert (again.skipped, again.judgments_written) == (before // 2, 2 * len(ids) - before)
    assert ws.row_count("judgments") == 2 * len(ids)  # nothing lost, nothing judged twice


def test_reward_model_scores_match_transformers(tiny_reward_model: Path, tmp_path: Path) -> None:
    cpu_engine_env()
    pairs = sample_pairs()
    kwargs = {"max_length": 512, "gpu_memory_utilization": 0.3, "enforce_eager": True}
    path = str(tiny_reward_model)
    vllm_scores = SequenceClassifierScorer(path, backend="vllm", **kwargs).score(pairs)
    hf_scores = SequenceClassifierScorer(path, backend="transformers", **kwargs).score(pairs)
    assert vllm_scores.shape == (len(pairs), 2)
    # Both run in float32 on the CPU, so the raw scores agree as closely as pipeline.rm's do.
    np.testing.assert_allclose(vllm_scores, hf_scores, atol=1e-4, rtol=1e-4)
    assert np.ptp(hf_scores) > 1e-3  # the scores differ across pairs, so equality means something
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    cfg = JudgeConfig(name="rm", kind="reward-model", model=str(tiny_reward_model), backend="vllm",
                      max_model_len=512, gpu_memory_utilization=0.3, enforce_eager=True)
    judge_pairs(ws, build_judges([cfg]), ids, round=1, seed=0)
    stored = pl.from_arrow(ws.read("judgments")).sort("pair_id")
    gaps = {p.pair_id: s[0] - s[1] for p, s in zip(pairs, vllm_scores, strict=True)}
    for row in stored.iter_rows(named=True):
        assert row["margin"] == pytest.approx(math.tanh(gaps[row["pair_id"]] / 2), abs=1e-6)
        assert row["verdict"] == ("chosen" if gaps[row["pair_id"]] > 0 else "rejected")
