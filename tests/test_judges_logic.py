"""Candidate order, verdict mapping, prompts, aggregation, rules and the judging run (no LLM engine)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import polars as pl
import pytest

from pipeline.judges import (
    JudgeError,
    aggregate_votes,
    build_judges,
    judge_agreement,
    judge_pairs,
    load_pairs,
)
from pipeline.judges.aggregate import judge_verdicts, position_consistency
from pipeline.judges.base import (
    LabeledExample,
    candidate_orders,
    margin_from_label_logprobs,
    verdict_from_label,
)
from pipeline.judges.prompts import guideline_for, pairwise_prompt, parse_label, strip_tool_use
from pipeline.judges.rules import answers_match, final_answer, normalize_answer
from schemas.attributes import PreferenceAttributes
from schemas.config.judges import JudgeConfig
from schemas.labels import CandidateOrder, Verdict
from tests.fixtures.judge_pairs import make_pair, workspace_with_pairs
from tests.fixtures.vllm_server import free_port

CF, RF = CandidateOrder.chosen_first, CandidateOrder.rejected_first


def test_candidate_orders_are_seeded_and_recorded() -> None:
    assert candidate_orders("p", both=True, seed=0) == [CF, RF]
    ids = [f"pair-{i}" for i in range(200)]
    first = [candidate_orders(p, both=False, seed=3, judge="j")[0] for p in ids]
    assert first == [candidate_orders(p, both=False, seed=3, judge="j")[0] for p in ids]
    assert 60 < first.count(CF) < 140  # both orders occur, roughly balanced
    assert first != [candidate_orders(p, both=False, seed=4, judge="j")[0] for p in ids]


def test_labels_map_back_to_the_stored_pair() -> None:
    assert verdict_from_label("1", CF) == Verdict.chosen
    assert verdict_from_label("2", CF) == Verdict.rejected
    assert verdict_from_label("1", RF) == Verdict.rejected
    assert verdict_from_label("2", RF) == Verdict.chosen
    assert verdict_from_label(None, CF) == Verdict.invalid
    assert margin_from_label_logprobs(math.log(0.6), math.log(0.2), CF) == pytest.approx(0.5)
    assert margin_from_label_logprobs(math.log(0.6), math.log(0.2), RF) == pytest.approx(-0.5)
    assert margin_from_label_logprobs(math.log(0.3), None, RF) == pytest.approx(-1.0)
    assert margin_from_label_logprobs(None, None, CF) is None


def test_parse_label_fallback() -> None:
    assert parse_label("1") == "1"
    assert parse_label(" 2.") == "2"
    assert parse_label("I prefer Candidate 2 because...") == "2"
    assert parse_label("neither") is None


def test_guideline_has_no_tool_use_and_follows_the_attributes() -> None:
    text = "Be accurate. Search the web to verify claims. Be brief."
    assert strip_tool_use(text) == "Be accurate. Be brief."
    attrs = PreferenceAttributes(task_category="factual-qa", objectivity="objective",
                                 controversiality="high", desired_attributes=["accuracy"],
                                 guideline="Check the capital city. Use a calculator if needed.")
    text = guideline_for(attrs)
    assert "factually accurate" in text and "contested or sensitive" in text
    assert "Check the capital city." in text
    for word in ("search", "calculator", "LLM assistant"):
        assert word.lower() not in text.lower()


def test_pairwise_prompt_orders_candidates_and_caps_examples() -> None:
    pair = make_pair("Name a color.", "Blue.", "A dog.")
    shots = [LabeledExample(make_pair(f"Question {i}?", f"good {i}", f"bad {i}"), Verdict.chosen)
             for i in range(10)]
    p1 = pairwise_prompt(pair, CF, examples=shots)
    p2 = pairwise_prompt(pair, RF, examples=shots)
    assert p1.count("## Example") == 8
    tail1, tail2 = p1.split("# Pair to judge")[1], p2.split("# Pair to judge")[1]
    assert tail1.index("Blue.") < tail1.index("A dog.")
    assert tail2.index("A dog.") < tail2.index("Blue.")
    shared = p1.split("[Candidate 1]\nBlue.")[0]
    assert p2.startswith(shared) and len(shared) > len(p1) * 0.8  # long prefix for the cache
    for i in range(8):  # every example names the better candidate correctly
        block = p1.split(f"## Example {i + 1}\n")[1].split("## Example")[0]
        better = block.split("Better: ")[1][0]
        assert block.split(f"[Candidate {better}]\n")[1].startswith("good")


def _judgments(rows: list[tuple[str, str, int, CandidateOrder, Verdict]]) -> pl.DataFrame:
    return pl.DataFrame(
        [{"pair_id": p, "judge": j, "model": "m", "sample": s, "order": o.value, "verdict": v.value,
          "margin": None, "raw_text": "", "round": 1} for p, j, s, o, v in rows],
        schema={"pair_id": pl.String, "judge": pl.String, "model": pl.String, "sample": pl.Int32,
                "order": pl.String, "verdict": pl.String, "margin": pl.Float64, "raw_text": pl.String,
                "round": pl.Int32})


C, R, T, X = Verdict.chosen, Verdict.rejected, Verdict.tie, Verdict.invalid
ROWS = [
    ("A", "j1", 0, CF, C), ("A", "j1", 0, RF, C), ("A", "j2", 0, CF, C), ("A", "j3", 0, CF, R),
    ("B", "j1", 0, CF, C), ("B", "j1", 0, RF, R), ("B", "j2", 0, CF, R), ("B", "j3", 0, RF, R),
    ("C", "j1", 0, CF, C), ("C", "j2", 0, CF, R),
    ("D", "j1", 0, CF, X), ("D", "j2", 0, RF, X),
    ("E", "j1", 0, CF, C), ("E", "j1", 1, CF, C), ("E", "j1", 2, CF, R),
]


def test_aggregate_votes_exact_outcomes() -> None:
    out = {r["pair_id"]: r for r in aggregate_votes(_judgments(ROWS)).iter_rows(named=True)}
    assert (out["A"]["verdict"], out["A"]["agreement"], out["A"]["position_inconsistent"]) == (
        "chosen", pytest.approx(2 / 3), False)
    assert json.loads(out["A"]["votes"]) == {"j1": "chosen", "j2": "chosen", "j3": "rejected"}
    # j1 flips with the order: it ties, the pair is position-inconsistent, the others decide.
    assert (out["B"]["verdict"], out["B"]["agreement"], out["B"]["position_inconsistent"]) == (
        "rejected", pytest.approx(2 / 3), True)
    assert json.loads(out["B"]["votes"])["j1"] == "tie"
    assert (out["C"]["verdict"], out["C"]["agreement"]) == ("tie", pytest.approx(0.5))
    assert (out["D"]["verdict"], out["D"]["agreement"]) == ("invalid", 0.0)
    assert json.loads(out["D"]["votes"]) == {"j1": "invalid", "j2": "invalid"}
    assert out["E"]["verdict"] == "chosen"  # self-consistency: 2 of 3 samples
    assert set(out) == {"A", "B", "C", "D", "E"}


def test_position_inconsistency_compares_each_orders_majority() -> None:
    # Sampled answers are independent draws: sample i of one order says nothing about sample i
    # of the other. F agrees in majority (C in both orders) although samples 0 and 2 differ;
    # G's majorities are opposite; H ties in one order and is chosen in the other (no flip).
    rows = [
        *[("F", "j1", s, CF, v) for s, v in enumerate([C, C, R])],
        *[("F", "j1", s, RF, v) for s, v in enumerate([R, C, C])],
        *[("G", "j1", s, CF, v) for s, v in enumerate([C, C, R])],
        *[("G", "j1", s, RF, v) for s, v in enumerate([R, R, C])],
        *[("H", "j1", s, CF, v) for s, v in enumerate([C, R])],
        *[("H", "j1", s, RF, v) for s, v in enumerate([C, C])],
        ("H", "j1", 2, RF, X),  # invalid rows do not vote in either order
    ]
    judgments = _judgments(rows)
    per_judge = {r["pair_id"]: r for r in judge_verdicts(judgments).iter_rows(named=True)}
    assert {p: (r["verdict"], r["both_orders"], r["flipped"]) for p, r in per_judge.items()} == {
        "F": ("chosen", True, False), "G": ("tie", True, True), "H": ("chosen", True, False)}
    out = {r["pair_id"]: r for r in aggregate_votes(judgments).iter_rows(named=True)}
    assert [(p, out[p]["verdict"], out[p]["position_inconsistent"]) for p in "FGH"] == [
        ("F", "chosen", False), ("G", "tie", True), ("H", "chosen", False)]
    pos = position_consistency(judgments).row(0, named=True)
    assert (pos["pairs"], pos["inconsistent"], pos["rate"]) == (3, 1, pytest.approx(1 / 3))


def test_aggregate_votes_weights_break_a_draw() -> None:
    out = aggregate_votes(_judgments(ROWS), {"j1": 2.0}).filter(pl.col("pair_id") == "C").row(0, named=True)
    assert (out["verdict"], out["agreement"]) == ("chosen", pytest.approx(2 / 3))


def test_agreement_and_position_summaries() -> None:
    judgments = _judgments(ROWS)
    agree = {(r["judge_a"], r["judge_b"]): r for r in judge_agreement(judgments).iter_rows(named=True)}
    # j1 vs j2 on A (chosen/chosen), B (tie/rejected), C (chosen/rejected): 1 of 3.
    assert agree[("j1", "j2")]["pairs"] == 3
    assert agree[("j1", "j2")]["agreement"] == pytest.approx(1 / 3)
    pos = position_consistency(judgments).row(0, named=True)
    assert (pos["judge"], pos["pairs"], pos["inconsistent"]) == ("j1", 2, 1)


def test_aggregate_votes_empty() -> None:
    assert aggregate_votes(_judgments([])).columns == [
        "pair_id", "verdict", "agreement", "position_inconsistent", "votes"]


def test_rule_answers() -> None:
    assert final_answer("so x = \\boxed{\\frac{9}{2}} here") == "\\frac{9}{2}"
    assert normalize_answer("\\frac{9}{2}") == normalize_answer("4.5")
    assert final_answer("#### 1,234") == "1,234" and normalize_answer("1,234") == "1234"
    assert answers_match("The answer is 84.", "84")
    assert not answers_match("The answer is 74.", "84")


def test_rule_judge_run_stores_judgments_and_skips_on_rerun(tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    judges = build_judges([JudgeConfig(name="rules", kind="rule")])
    stats = judge_pairs(ws, judges, ids, round=1, seed=0)
    # Pairs 0 and 1 have one right answer; pair 2 has two (abstain); the rest have no reference.
    assert (stats.judgments_written, stats.abstained, stats.skipped) == (2, 4, 0)
    stored = pl.from_arrow(ws.read("judgments"))
    assert sorted(stored["pair_id"].to_list()) == sorted(ids[:2])
    assert set(stored["verdict"].to_list()) == {"chosen"}
    again = judge_pairs(ws, judges, ids, round=1, seed=0)
    assert (again.judgments_written, again.skipped) == (0, 2)
    assert ws.row_count("judgments") == 2


def test_judge_pairs_honours_each_judges_batch_size(tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    judges = build_judges([JudgeConfig(name="small", kind="rule", batch_size=2),
                           JudgeConfig(name="large", kind="rule", batch_size=4)])
    calls: list[tuple[str, int, int]] = []
    judge_pairs(ws, judges, ids, round=1, seed=0, progress=lambda n, d, t: calls.append((n, d, t)))
    assert calls == [("small", 0, 6), ("small", 2, 6), ("small", 4, 6), ("small", 6, 6),
                     ("large", 0, 6), ("large", 4, 6), ("large", 6, 6)]
    assert ws.row_count("judgments") == 4  # each rule judge decides pairs 0 and 1 only


def test_sampled_self_consistency_needs_a_temperature() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="temperature must be > 0 when samples > 1"):
        JudgeConfig(name="greedy", kind="vllm", model="m", samples=3)
    with pytest.raises(ValidationError, match="temperature must be > 0 when samples > 1"):
        JudgeConfig(name="greedy", kind="openai", model="m", endpoints=["http://x/v1"], samples=2,
                    temperature=0.0)
    assert JudgeConfig(name="sampled", kind="vllm", model="m", samples=3, temperature=0.7).samples == 3
    assert JudgeConfig(name="greedy", kind="vllm", model="m").samples == 1


def test_judge_pairs_rejects_unknown_ids(tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    with pytest.raises(ValueError, match="1 pair ids are not in the pool"):
        judge_pairs(ws, build_judges([JudgeConfig(name="r", kind="rule")]), [*ids, "nope"], 1, 0)


def test_build_judges_validates_configs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kind 'magic'"):
        build_judges([JudgeConfig(name="x", kind="magic")])
    with pytest.raises(ValueError, match="repeated"):
        build_judges([JudgeConfig(name="x", kind="rule"), JudgeConfig(name="x", kind="rule")])
    with pytest.raises(ValueError, match="needs `model`"):
        build_judges([JudgeConfig(name="x", kind="vllm")])
    with pytest.raises(ValueError, match="needs a workspace"):
        build_judges([JudgeConfig(name="x", kind="rm-workspace")])
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    judge = build_judges([JudgeConfig(name="g", kind="rm-workspace", model="rm/none")], ws=ws)
    with pytest.raises(FileNotFoundError, match="no reward model at"):
        judge_pairs(ws, judge, ids, 1, 0)


def test_server_down_is_a_clear_error_and_earlier_judgments_stay(tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    judges = build_judges([
        JudgeConfig(name="rules", kind="rule"),
        JudgeConfig(name="remote", kind="openai", model="m", endpoints=[dead], retries=1, timeout_s=5),
    ])
    with pytest.raises(JudgeError, match=r"judge 'remote'.*127\.0\.0\.1.*failed after 2 attempts"):
        judge_pairs(ws, judges, ids, round=1, seed=0)
    assert ws.row_count("judgments") == 2  # the rule judge's work was stored before the failure


def test_workspace_rm_judge_uses_the_trained_reward_model(tmp_path: Path) -> None:
    from pipeline.rm import load_rm, train_rm
    from schemas.config.rm import RMConfig

    ws, ids = workspace_with_pairs(tmp_path / "ws")
    train = pl.DataFrame({"pair_id": ids, "verdict": ["chosen"] * len(ids)})
    train_rm(ws, RMConfig(epochs=2, batch_size=4), train, None, "rm/gold")
    judges = build_judges([JudgeConfig(name="gold-rm", kind="rm-workspace", model="rm/gold")], ws=ws)
    stats = judge_pairs(ws, judges, ids, round=1, seed=0)
    assert stats.judgments_written == len(ids)
    scores = load_rm(ws, "rm/gold").score(load_pairs(ws, ids))
    stored = {r["pair_id"]: r for r in ws.read("judgments").to_pylist()}
    for pair_id, (rc, rr) in zip(ids, scores, strict=True):
        assert stored[pair_id]["margin"] == pytest.approx(math.tanh((rc - rr) / 2), abs=1e-5)
        assert stored[pair_id]["verdict"] == ("chosen" if rc > rr else "rejected")


def test_judge_and_attributes_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli.main import app

    ws, ids = workspace_with_pairs(tmp_path / "ws")
    judges = tmp_path / "judges.toml"
    judges.write_text('[[judges]]\nname = "rules"\nkind = "rule"\n', encoding="utf-8")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(ids[:3]), encoding="utf-8")
    runner = CliRunner()
    out = runner.invoke(app, ["attributes", "-w", str(ws.uri), "--limit", "4"])
    assert out.exit_code == 0, out.output
    assert ws.row_count("attributes") == 4
    # no selection: the rest of the active pool, by partition tasks, the first four kept
    first = ws.read("attributes").to_pylist()
    out = runner.invoke(app, ["attributes", "-w", str(ws.uri)])
    assert out.exit_code == 0, out.output
    assert ws.row_count("attributes") == len(ids) and ws.read("attributes").to_pylist()[:4] == first
    assert re.search(rf"│\s+{len(ids)} │ {len(ids) - 4}\s+│ 4\s+│", out.output)  # pairs, generated, skipped
    out = runner.invoke(app, ["judge", "--judges", str(judges), "-w", str(ws.uri), "--pairs", str(pairs),
                              "--round", "1"])
    assert out.exit_code == 0, out.output
    assert "verdicts" in out.output and ws.row_count("judgments") == 2
    out = runner.invoke(app, ["judge", "--judges", str(tmp_path / "missing.toml"), "-w", str(ws.uri)])
    assert out.exit_code == 1 and "judges file not found" in out.output


def test_judge_command_retrieves_gold_examples_like_the_loop(tmp_path: Path) -> None:
    from flows.cli.judge import example_count, retrieve_examples
    from flows.loop_state import add_labels, label_rows
    from schemas.config import EmbedConfig

    llm = JudgeConfig(name="llm", kind="openai", model="m", endpoints=["http://127.0.0.1:1/v1"], examples=5)
    rule = JudgeConfig(name="rules", kind="rule")
    assert example_count([llm, rule], None) == 5  # the loop's default: the LLM judges' largest
    assert example_count([llm, rule], 2) == 2
    assert example_count([rule], 8) == 0  # no LLM judge reads examples
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    embed = EmbedConfig(backend="torch")
    assert retrieve_examples(ws, embed, ids[3:], 2) == {}  # no gold yet: nothing to show
    add_labels(ws, "gold", label_rows(ids[:3], ["chosen", "rejected", "tie"], "human", 1))
    shots = retrieve_examples(ws, embed, ids[3:], 2)
    assert set(shots) == set(ids[3:])
    decided = {ids[0]: Verdict.chosen, ids[1]: Verdict.rejected}  # the tie is not a worked example
    for target, examples in shots.items():
        assert len(examples) == 2
        assert {e.pair.pair_id: e.verdict for e in examples} == decided
        assert target not in {e.pair.pair_id for e in examples}


def test_aggregate_votes_when_every_judgment_is_invalid() -> None:
    out = aggregate_votes(_judgments([("P", "j1", 0, CF, X), ("P", "j1", 0, RF, X)]), {"j1": 2.0})
    assert out.rows() == [("P", "invalid", 0.0, False, '{"j1": "invalid"}')]
