"""Evaluation numbers on constructed files with known answers, and the rm commands."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from pipeline.rm import evaluate, plot_report
from pipeline.rm.base import FitResult, PairLike, RewardModel
from pipeline.rm.evaluate import bootstrap_accuracy
from pipeline.store import Workspace
from schemas.config.rm import RMConfig
from schemas.pair import POOL_SCHEMA
from tests.fixtures.rm_engines import HHPool


class LengthRM(RewardModel):
    """A rule reward model: the longer response gets the higher reward. Its answers are known."""

    kind = "length-rule"

    def fit(self, train: Sequence[PairLike], gold: Sequence[PairLike] | None = None) -> FitResult:
        return FitResult()

    def score(self, records: Sequence[PairLike], *, progress=None) -> np.ndarray:
        return np.array([[len(r.chosen), len(r.rejected)] for r in records], dtype=np.float64)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def load(cls, directory: Path, cfg: RMConfig) -> LengthRM:
        return cls(cfg)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def bench_file(tmp_path: Path) -> Path:
    """10 pairs: subset easy (4, chosen longer), hard (1 longer, 3 shorter), even (2, same length)."""
    rows = [{"prompt": f"easy question {i}", "chosen": "a long and complete answer " * (i + 1),
             "rejected": "short", "subset": "easy"} for i in range(4)]
    rows.append({"prompt": "hard question 0", "chosen": "a longer good answer", "rejected": "bad",
                 "subset": "hard"})
    rows += [{"prompt": f"hard question {i}", "chosen": "right", "rejected": "a long wrong answer " * i,
              "subset": "hard"} for i in range(1, 4)]
    rows += [{"prompt": f"even question {i}", "chosen": f"yes {i}", "rejected": f"no! {i}", "subset": "even"}
             for i in range(2)]
    (tmp_path / "bench").mkdir()
    return write_jsonl(tmp_path / "bench" / "known.jsonl", rows)


def test_accuracy_per_source_subset_and_length_is_exact(bench_file: Path) -> None:
    report = evaluate(LengthRM(RMConfig()), [bench_file], resamples=500)
    assert report.overall is not None
    assert report.overall.n == 10 and report.overall.accuracy == pytest.approx(0.6)
    assert list(report.by_source) == ["bench/known"]
    subsets = report.by_subset["bench/known"]
    assert {k: v.accuracy for k, v in subsets.items()} == {"easy": 1.0, "hard": 0.25, "even": 0.5}
    assert {k: v.n for k, v in subsets.items()} == {"easy": 4, "hard": 4, "even": 2}
    assert (subsets["easy"].low, subsets["easy"].high) == (1.0, 1.0)
    longer, shorter = report.length_bias["chosen_longer"], report.length_bias["chosen_shorter"]
    assert (longer.accuracy, longer.n) == (1.0, 5)
    assert (shorter.accuracy, shorter.n) == (0.0, 3)
    assert report.overall.low < 0.6 < report.overall.high


def test_best_of_n_counts_a_hit_when_the_top_response_is_best(tmp_path: Path) -> None:
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [
        {"prompt": "p1", "responses": ["the longest response of all", "mid one", "s"], "scores": [3, 2, 1]},
        {"prompt": "p2", "responses": ["best", "a much longer but worse response", "ok"],
         "scores": [9, 1, 5]},
    ])
    lists = write_jsonl(tmp_path / "lists.jsonl", [
        {"prompt": "p3", "chosen": ["a long correct answer"], "rejected": ["no", "nope", "never"]},
        {"prompt": [{"role": "user", "content": "p4"}], "chosen": ["yes indeed!", "also a fine answer"],
         "rejected": ["no"]},
    ])
    report = evaluate(LengthRM(RMConfig()), [ranked, lists], resamples=200)
    assert report.overall is None
    assert report.best_of_n[str(ranked)]["accuracy"] == 0.5
    assert report.best_of_n[str(ranked)]["responses_per_prompt"] == [3]
    assert report.best_of_n[str(lists)]["accuracy"] == 1.0
    assert report.best_of_n[str(lists)]["chance"] == pytest.approx((1 / 4 + 2 / 3) / 2)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    small = bootstrap_accuracy((rng.random(50) < 0.7).astype(float))
    large = bootstrap_accuracy((rng.random(5000) < 0.7).astype(float))
    assert small.low <= small.accuracy <= small.high
    assert (large.high - large.low) < (small.high - small.low) / 5


def test_plot_and_json(bench_file: Path, tmp_path: Path) -> None:
    report = evaluate(LengthRM(RMConfig()), [bench_file], resamples=100)
    png = plot_report(report, tmp_path / "out" / "rm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(report.to_json())
    assert data["by_subset"]["bench/known"]["hard"]["accuracy"] == 0.25


def test_missing_evaluation_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="evaluation file not found"):
        evaluate(LengthRM(RMConfig()), [tmp_path / "nope.jsonl"])


def test_rm_commands_train_score_and_eval(hh_pool: HHPool, bench_file: Path, tmp_path: Path,
                                          tiny_reward_model: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    pool = hh_pool.ws.read("pool")
    ws.append("pool", pool.slice(0, 40), schema=POOL_SCHEMA)
    runner = CliRunner()
    trained = runner.invoke(app, ["rm", "train", "-w", str(ws.uri), "--labels", "pool", "--gold", "none",
                                  "--epochs", "2", "--out", "rm/cli", "--json"])
    assert trained.exit_code == 0, trained.output
    assert ws.read_json("rm/cli/train.json")["train_pairs"] == 40
    scored = runner.invoke(app, ["rm", "score", "rm/cli", "-w", str(ws.uri), "--round", "2"])
    assert scored.exit_code == 0, scored.output
    assert pl.from_arrow(ws.read("scores")).filter(pl.col("round") == 2).height == 40
    png = tmp_path / "eval.png"
    evaluated = runner.invoke(app, ["rm", "eval", str(tiny_reward_model), "--on", str(bench_file),
                                    "--scorer", "transformers", "--json", "--plot", str(png)])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["overall"]["n"] == 10 and png.exists()
    missing = runner.invoke(app, ["rm", "eval", str(tiny_reward_model), "--on", str(tmp_path / "x.jsonl")])
    assert missing.exit_code == 1 and "evaluation file not found" in missing.output
