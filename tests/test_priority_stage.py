"""The round-1 batches chosen by partition tasks are the batches chosen from the whole pool."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flows.loop_state import active_ids, labeled_ids, with_attributes
from pipeline.consistency import choose_priority_batch
from pipeline.partitions import plan_partitions
from pipeline.priority_stage import Batch, Gathered, PriorityStage, run_local
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA
from schemas.labels import LABELS_SCHEMA
from tests.embed_pool import mark_dropped, write_mixed_pool, write_pool

SEED_SIZE, SILVER_SIZE, SEED = 2, 3, 11
"""Small against the strata (about 6 pairs each), so the candidates are pruned."""


@pytest.fixture(scope="module")
def workspace(shared_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("priority"))
    ids = write_mixed_pool(ws, shared_raw, ultrafeedback=(50, 140), hh=(30, 60))
    n = len(ids) - 6  # the last six have no attributes: they rank as subjective, medium
    attributes = pl.DataFrame({
        "pair_id": ids[:n], "task_category": [["code", "math", "chat"][i % 3] for i in range(n)],
        "objectivity": [["objective", "subjective"][i % 2] for i in range(n)],
        "controversiality": [["low", "medium", "high"][i % 3] for i in range(n)],
        "desired_attributes": [[] for _ in range(n)], "guideline": [""] * n, "model": ["test"] * n})
    ws.append("attributes", attributes, schema=ATTRIBUTES_SCHEMA)
    mark_dropped(ws, ids[3:5])
    for table, labeled in (("gold", ids[0:3]), ("silver", ids[10:14])):
        k = len(labeled)
        ws.append(table, pl.DataFrame({"pair_id": labeled, "verdict": ["chosen"] * k, "origin": ["t"] * k,
                                       "round": [1] * k, "detail": [""] * k}), schema=LABELS_SCHEMA)
    return ws


def _from_the_whole_pool(ws: Workspace, verified: set[str]) -> tuple[list[str], list[str]]:
    """How the batches were chosen before: the active pool with its attributes, in one frame."""
    labeled = labeled_ids(ws)
    pool = with_attributes(ws, active_ids(ws))
    eligible = pool.filter(pl.col("label_source") == "human")
    human = choose_priority_batch(eligible, SEED_SIZE, SEED, exclude=labeled | verified)["pair_id"].to_list()
    silver = choose_priority_batch(pool, SILVER_SIZE, SEED + 1, exclude=labeled | set(human))
    return human, silver["pair_id"].to_list()


@pytest.mark.parametrize("rows", [1_000, 13, 4])
def test_partition_tasks_choose_the_batches_of_the_whole_pool(workspace: Workspace, rows: int) -> None:
    ws = workspace
    verified = set(active_ids(ws).filter(pl.col("label_source") == "human")["pair_id"].to_list()[:5])
    stage = PriorityStage((Batch(SEED_SIZE, SEED, human_labels_only=True, exclude=frozenset(verified)),
                           Batch(SILVER_SIZE + SEED_SIZE, SEED + 1)), exclude_tables=("gold", "silver"))
    gathered = Gathered(stage)
    partitions = plan_partitions(ws, rows)
    run_local(ws, stage, partitions, gathered)
    human = choose_priority_batch(gathered.frames[0], SEED_SIZE, SEED)["pair_id"].to_list()
    silver = choose_priority_batch(gathered.frames[1], SILVER_SIZE, SEED + 1, exclude=set(human))
    assert (human, silver["pair_id"].to_list()) == _from_the_whole_pool(ws, verified)
    assert len(human) == SEED_SIZE and silver.height == SILVER_SIZE
    assert gathered.tasks == len(partitions) and gathered.examined == 78  # 80 pairs, 2 dropped
    # the driver holds at most `size` candidates per (tier, stratum) of each batch
    for frame, batch in zip(gathered.frames, stage.batches, strict=True):
        per_group = frame.group_by("source", "task_category", "objectivity", "controversiality").len()
        assert per_group["len"].max() <= batch.size  # type: ignore[operator]
    assert gathered.frames[1].height < 78 - 7 - 5  # fewer than the unlabeled active pairs


def test_tasks_pre_verify_their_objective_pairs_as_one_call_over_the_pool_did(tmp_path: Path) -> None:
    import shutil

    from pipeline.judges import build_judges, judge_pairs
    from pipeline.judges.rules import verifier_decided
    from schemas.config.judges import JudgeConfig
    from schemas.pair import LabelSource
    from tests.fixtures.judge_pairs import make_pair

    math = [make_pair(f"What is {a} + {a + 1}?", f"The answer is {2 * a + 1}.", f"The answer is {2 * a}.",
                      reference_answer=str(2 * a + 1)) for a in range(24)]
    unsure = [make_pair(f"What is {a} * 3?", "Hard to say.", "Maybe.", reference_answer=str(3 * a))
              for a in range(6)]  # objective, but no verifier decides them
    other = [make_pair(f"Write a line about the number {a}.", f"{a} is fine.", "No.") for a in range(10)]
    pairs = [p.model_copy(update={"label_source": LabelSource.human}) for p in [*math, *unsure, *other]]
    ws = Workspace(tmp_path / "ws")
    write_pool(ws, pairs)
    n = len(pairs)
    ws.append("attributes", pl.DataFrame({
        "pair_id": [p.pair_id for p in pairs], "task_category": ["math"] * 30 + ["writing"] * 10,
        "objectivity": ["objective"] * 30 + ["subjective"] * 10, "controversiality": ["low"] * n,
        "desired_attributes": [["correct"] for _ in range(n)], "guideline": ["Check the answer."] * n,
        "model": ["test"] * n}),
        schema=ATTRIBUTES_SCHEMA)
    shutil.copytree(tmp_path / "ws", tmp_path / "before")
    rules = JudgeConfig(name="rules", kind="rule")

    # before: every objective pair of the pool judged in one call, the decided ones left out
    old = Workspace(tmp_path / "before")
    objective = sorted(p.pair_id for p in [*math, *unsure])
    judge_pairs(old, build_judges([rules], ws=old), objective, 1, 1)
    decided = verifier_decided(old, round=1, judges=["rules"])
    assert decided == {p.pair_id for p in math}
    human = choose_priority_batch(with_attributes(old, active_ids(old)), 12, SEED, exclude=decided)

    stage = PriorityStage((Batch(12, SEED, human_labels_only=True, skip_verified=True),),
                          rules=(rules,), round=1, seed=1)
    gathered = Gathered(stage)
    run_local(ws, stage, plan_partitions(ws, 9), gathered)
    assert gathered.tasks == 5 and gathered.verified == len(math)
    chosen = choose_priority_batch(gathered.frames[0], 12, SEED)["pair_id"]
    assert chosen.to_list() == human["pair_id"].to_list()
    assert not set(human["pair_id"]) & decided and human.height == 12

    def verdicts(w: Workspace) -> list[tuple[str, str, str]]:
        frame = pl.from_arrow(w.read("judgments", ["pair_id", "judge", "verdict"]))
        return sorted(frame.iter_rows())  # type: ignore[union-attr]

    assert verdicts(ws) == verdicts(old)
    # judgments parts say which pool rows they come from, so each task read only its own
    assert all("covers" in s for s in ws.manifest("judgments")["shards"])
