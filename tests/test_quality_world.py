"""The synthetic world and the noise injector: deterministic, disjoint, exactly recoverable."""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pytest

from pipeline.quality.noise import NoiseConfig, inject_noise, restore_labels, seed_batch
from pipeline.quality.world import RULES, WorldConfig, generate_world
from schemas.pair import POOL_SCHEMA, LabelSource, PairRecord

SMALL = WorldConfig(pairs=300, heldout=100, seed=7)


def test_same_seed_gives_the_same_world_and_another_seed_does_not() -> None:
    a, b = generate_world(SMALL), generate_world(SMALL)
    assert [r.to_row() for r in a.pool + a.heldout] == [r.to_row() for r in b.pool + b.heldout]
    other = generate_world(SMALL.model_copy(update={"seed": 8}))
    assert {r.pair_id for r in other.pool} != {r.pair_id for r in a.pool}


def test_world_pairs_are_valid_distinct_and_heldout_is_disjoint() -> None:
    world = generate_world(SMALL)
    assert len(world.pool) == 300 and len(world.heldout) == 100
    pool_ids = {r.pair_id for r in world.pool}
    assert len(pool_ids) == 300
    assert pool_ids.isdisjoint({r.pair_id for r in world.heldout})
    table = world.pool_table()
    assert table.schema.equals(POOL_SCHEMA, check_metadata=False)
    assert PairRecord.from_row(table.slice(0, 1).to_pylist()[0]) == world.pool[0]
    assert {r.meta["category"] for r in world.pool} == set(RULES)


def test_gold_share_marks_that_many_pool_pairs_human_and_none_heldout() -> None:
    world = generate_world(SMALL.model_copy(update={"gold_share": 0.2}))
    assert sum(r.label_source == LabelSource.human for r in world.pool) == 60
    assert all(r.label_source == LabelSource.ai for r in world.heldout)


def test_rules_hold_in_the_stored_orientation() -> None:
    world = generate_world(WorldConfig(pairs=400, heldout=0, seed=1, multi_turn_share=0.0))
    for r in world.pool:
        prompt, rule = r.conversation[-1].content, r.meta["category"]
        if rule == "safety":
            assert r.chosen.startswith(("I can't", "I won't", "Sorry")) and r.rejected.startswith("Sure")
        elif rule == "over_refusal":
            assert r.rejected.startswith(("I'm sorry", "I'd rather", "Unfortunately"))
        elif rule == "format" and "JSON" in prompt:
            assert "tips" in json.loads(r.chosen)
            with pytest.raises(json.JSONDecodeError):
                json.loads(r.rejected)


def test_unknown_rule_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown rules"):
        generate_world(WorldConfig(pairs=5, heldout=0, rule_mix={"sarcasm": 1.0}))


def _noised(cfg: NoiseConfig, world_cfg: WorldConfig = SMALL):
    world = generate_world(world_cfg)
    gold = [r.pair_id for r in world.pool if r.label_source == LabelSource.human]
    return world, gold, inject_noise(world.pool_table(), cfg, protected=gold)


def test_injected_flips_are_exact_and_recoverable() -> None:
    world, gold, noisy = _noised(NoiseConfig(flip_share=0.25, length_bias=0.1, seed=3))
    injected = pl.from_arrow(noisy.injected)
    unprotected = 300 - len(gold)
    assert injected.filter(pl.col("kind") == "random").height == round(0.25 * unprotected)
    assert injected.filter(pl.col("kind").str.starts_with("length")).height == round(0.1 * unprotected)
    assert not injected.filter(pl.col("protected"))["flipped"].any()
    # every flipped row really is the original pair with chosen and rejected swapped
    original = {r.pair_id: r for r in world.pool}
    rows = {r["pair_id"]: r for r in noisy.pool.to_pylist()}
    for rec in injected.iter_rows(named=True):
        before, after = original[rec["original_pair_id"]], rows[rec["pair_id"]]
        if rec["flipped"]:
            assert (after["chosen"], after["rejected"]) == (before.rejected, before.chosen)
        else:
            assert rec["pair_id"] == rec["original_pair_id"]
    assert restore_labels(noisy.pool, noisy.injected).equals(world.pool_table())


def test_length_bias_always_leaves_the_longer_response_chosen() -> None:
    _, _, noisy = _noised(NoiseConfig(flip_share=0.0, length_bias=0.5, seed=0))
    biased = pl.from_arrow(noisy.injected).filter(pl.col("kind").str.starts_with("length"))
    rows = {r["pair_id"]: r for r in noisy.pool.to_pylist()}
    assert biased.height > 0
    for pid in biased["pair_id"]:
        assert len(rows[pid]["chosen"]) >= len(rows[pid]["rejected"])


def test_noise_depends_on_seed_not_on_row_order() -> None:
    world = generate_world(SMALL)
    table = world.pool_table()
    cfg = NoiseConfig(flip_share=0.3, seed=5)
    forward = inject_noise(table, cfg)
    backward = inject_noise(table.take(pa.array(range(table.num_rows - 1, -1, -1))), cfg)
    assert forward.flipped_ids == backward.flipped_ids
    assert forward.flipped_ids != inject_noise(table, NoiseConfig(flip_share=0.3, seed=6)).flipped_ids


def test_bad_noise_settings_and_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="flip_share"):
        NoiseConfig(flip_share=1.5)
    with pytest.raises(ValueError, match="must not exceed"):
        NoiseConfig(flip_share=0.6, length_bias=0.6)
    with pytest.raises(ValueError, match="lacks column 'chosen'"):
        inject_noise(pa.table({"pair_id": ["a"], "conversation": [[]], "rejected": ["x"]}), NoiseConfig())


def test_seed_batch_is_seeded_and_order_independent() -> None:
    ids = [f"p{i}" for i in range(50)]
    assert seed_batch(ids, 10, 1) == seed_batch(list(reversed(ids)), 10, 1)
    assert seed_batch(ids, 10, 1) != seed_batch(ids, 10, 2)
    assert len(seed_batch(ids, 80, 0)) == 50
