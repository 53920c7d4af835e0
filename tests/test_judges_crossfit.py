"""The cross-fitted pool-RM judge: out-of-fold verdicts that find flipped labels in a noised world,
and the embedding-head RM's minimum step count for small training sets."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.judges.crossfit import CrossFitRMJudge, fold_of
from pipeline.judges.run import build_judges
from pipeline.quality.meter import injected, noisy_copy
from pipeline.quality.noise import NoiseConfig
from pipeline.quality.world import WorldConfig, generate_world
from pipeline.rm import Example
from pipeline.rm.embedding_head import EmbeddingHeadRM
from pipeline.store import Workspace
from schemas.config import JudgeConfig
from schemas.config.rm import RMConfig
from schemas.labels import LABELS_SCHEMA
from schemas.pair import PairRecord


@pytest.fixture(scope="module")
def noised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, list[str]]:
    """A 300-pair world with 60 gold pairs and 25% of the rest flipped."""
    world = generate_world(WorldConfig(pairs=300, heldout=0, seed=4, gold_share=0.2, cue_share=1.0))
    gold = [r.pair_id for r in world.pool if r.label_source == "human"]
    ws = Workspace(tmp_path_factory.mktemp("crossfit") / "ws")
    noisy_copy(world.pool_table(), ws, NoiseConfig(flip_share=0.25, seed=4), gold_ids=gold)
    rows = pl.DataFrame({"pair_id": gold, "verdict": ["chosen"] * len(gold), "origin": ["human"] * len(gold),
                         "round": [1] * len(gold), "detail": [""] * len(gold)})
    ws.append("gold", rows.to_arrow().cast(LABELS_SCHEMA), unique_key=["pair_id"])
    return ws, gold


def _records(ws: Workspace, ids: list[str]) -> list[PairRecord]:
    pool = pl.from_arrow(ws.read("pool")).filter(pl.col("pair_id").is_in(ids))  # type: ignore[union-attr]
    by_id = {r["pair_id"]: PairRecord.from_row(r) for r in pool.to_dicts()}
    return [by_id[p] for p in ids]


def test_folds_are_stable_and_cover_every_fold() -> None:
    ids = [f"pair-{i}" for i in range(200)]
    assert [fold_of(p, 5) for p in ids] == [fold_of(p, 5) for p in ids]
    assert {fold_of(p, 5) for p in ids} == set(range(5))


def test_no_fold_model_trains_on_the_pairs_it_judges(noised: tuple[Workspace, list[str]]) -> None:
    ws, gold = noised
    judge = CrossFitRMJudge("pool-rm", "", ws=ws, folds=3)
    labels = judge.current_labels()
    assert set(labels.filter(pl.col("gold"))["pair_id"].to_list()) == set(gold)
    others = [p for p in labels["pair_id"].to_list() if p not in set(gold)]
    for fold in range(3):
        train, gold_examples = judge.fold_data(fold)
        trained = {e.pair_id for e in train}
        judged = {p for p in others if fold_of(p, 3) == fold}
        assert judged and not judged & trained  # the fold's own pairs are never trained on
        assert trained == set(others) - judged | set(gold)  # every other fold and the gold seed
        assert {e.pair_id for e in gold_examples} == set(gold)


def test_out_of_fold_verdicts_find_most_flipped_labels(noised: tuple[Workspace, list[str]]) -> None:
    ws, _ = noised
    truth = injected(ws).filter(~pl.col("protected"))
    ids = truth["pair_id"].to_list()
    [judge] = build_judges([JudgeConfig(name="pool-rm", kind="rm-crossfit", folds=3)], ws=ws)
    judgments = judge.judge(_records(ws, ids), attributes={}, examples={}, round=1)
    assert [j.pair_id for j in judgments] == ids
    flagged = {j.pair_id for j in judgments if j.verdict.value == "rejected"}
    flipped = set(truth.filter(pl.col("flipped"))["pair_id"].to_list())
    recall = len(flagged & flipped) / len(flipped)
    precision = len(flagged & flipped) / max(len(flagged), 1)
    # Random flagging would give precision 0.25 and recall 0.25 here.
    assert recall >= 0.6 and precision >= 0.5, (precision, recall)


def test_a_later_task_on_the_same_labels_loads_the_fold_rms_and_new_labels_train_new_ones(
        noised: tuple[Workspace, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    ws, _ = noised
    ids = injected(ws).filter(~pl.col("protected"))["pair_id"].to_list()[:60]
    first = CrossFitRMJudge("cached", "", ws=ws, folds=3)
    made = first.judge(_records(ws, ids), attributes={}, examples={}, round=1)
    kept = [first.cache_dir(fold) for fold in range(3)]
    assert all(k is not None and (k / "head.pt").exists() for k in kept)
    # A judge in another task (a new object) loads every fold's RM: nothing trains again, and its
    # verdicts and margins are the first judge's.
    copy = Workspace(str(tmp_path / "copy"))
    shutil.copytree(ws.root, copy.root, dirs_exist_ok=True)
    trained: list[int] = []
    fit = EmbeddingHeadRM.fit
    monkeypatch.setattr(EmbeddingHeadRM, "fit", lambda self, *a, **k: trained.append(1) or fit(self, *a, **k))
    second = CrossFitRMJudge("cached", "", ws=ws, folds=3)
    assert [second.cache_dir(fold) for fold in range(3)] == kept
    assert [j.model_dump() for j in second.judge(_records(ws, ids), attributes={}, examples={}, round=1)
            ] == [j.model_dump() for j in made]
    assert trained == []
    # One label more (a silver verdict) is another set of labels: its fold RMs are trained anew.
    silver = pl.DataFrame({"pair_id": [ids[0]], "verdict": ["rejected"], "origin": ["judges"], "round": [1],
                           "detail": [""]})
    copy.append("silver", silver.to_arrow().cast(LABELS_SCHEMA), unique_key=["pair_id"])
    third = CrossFitRMJudge("cached", "", ws=copy, folds=3)
    assert third.cache_dir(0) is not None and third.cache_dir(0).name == "fold-0"
    assert third.cache_dir(0).parent.name != kept[0].parent.name  # type: ignore[union-attr]
    third.judge(_records(copy, ids[:5]), attributes={}, examples={}, round=1)
    assert trained


def test_crossfit_judge_refuses_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a workspace"):
        CrossFitRMJudge("pool-rm", "", ws=None)
    with pytest.raises(ValueError, match="folds"):
        JudgeConfig(name="pool-rm", kind="rm-crossfit", folds=1)


def test_small_training_sets_train_for_at_least_min_steps() -> None:
    world = generate_world(WorldConfig(pairs=40, heldout=0, seed=1))
    train = [Example.from_record(r) for r in world.pool]
    few = EmbeddingHeadRM(RMConfig(epochs=2, min_steps=0, batch_size=16)).fit(train)
    more = EmbeddingHeadRM(RMConfig(epochs=2, min_steps=30, batch_size=16)).fit(train)
    assert few.checkpoints[-1].step == 2 * 3  # 40 pairs: 3 batches per epoch
    assert len(more.checkpoints) == 10 and more.checkpoints[-1].step == 30
