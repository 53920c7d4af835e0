"""Held-out gold: stratified, seeded, append-only, independent of row order."""

from __future__ import annotations

import math

import polars as pl
import pytest

from pipeline.trust import EVAL, TRAIN, assign_gold_parts, stratum_key


def gold(strata: dict[str, int], prefix: str = "p") -> pl.DataFrame:
    rows = [(f"{prefix}-{s}-{i}", s) for s, size in strata.items() for i in range(size)]
    return pl.DataFrame(rows, schema={"pair_id": pl.Utf8, "stratum": pl.Utf8}, orient="row")


EMPTY = pl.DataFrame(schema={"pair_id": pl.Utf8, "part": pl.Utf8, "stratum": pl.Utf8})
STRATA = {stratum_key("hh", "chat"): 40, stratum_key("hh", "code"): 9, stratum_key("uf", "math"): 30}


def eval_counts(parts: pl.DataFrame) -> dict[str, int]:
    grouped = parts.group_by("stratum").agg((pl.col("part") == EVAL).sum().alias("eval"))
    return dict(zip(grouped["stratum"].to_list(), grouped["eval"].to_list(), strict=True))


def test_every_sizeable_stratum_gets_its_share() -> None:
    parts = assign_gold_parts(gold(STRATA), EMPTY, share=1 / 3, seed=0)
    counts = eval_counts(parts)
    for stratum, size in STRATA.items():
        assert abs(counts[stratum] - size / 3) < 1
    assert set(parts["part"].unique()) == {TRAIN, EVAL}


def test_singleton_strata_still_reach_the_overall_share() -> None:
    singletons = {f"src\x1fcat{i}": 1 for i in range(10)}
    parts = assign_gold_parts(gold(singletons), EMPTY, share=0.3, seed=1)
    assert (parts["part"] == EVAL).sum() == 3


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.7, 1.0])
def test_overall_eval_count_is_rounded_share(share: float) -> None:
    strata = {f"s{i}": size for i, size in enumerate([1, 1, 2, 3, 5, 8, 13, 1, 4])}
    parts = assign_gold_parts(gold(strata), EMPTY, share=share, seed=3)
    assert (parts["part"] == EVAL).sum() == round(share * parts.height)


def test_share_zero_is_all_train() -> None:
    parts = assign_gold_parts(gold(STRATA), EMPTY, share=0.0, seed=0)
    assert parts["part"].unique().to_list() == [TRAIN]


def test_same_parts_whatever_the_row_order() -> None:
    frame = gold(STRATA)
    first = assign_gold_parts(frame, EMPTY, share=0.3, seed=5)
    shuffled = assign_gold_parts(frame.sample(fraction=1.0, shuffle=True, seed=9), EMPTY, share=0.3, seed=5)
    assert first.equals(shuffled)


def test_seed_changes_which_pairs_are_held_out() -> None:
    a = assign_gold_parts(gold(STRATA), EMPTY, share=0.3, seed=1)
    b = assign_gold_parts(gold(STRATA), EMPTY, share=0.3, seed=2)
    assert not a.equals(b)
    assert eval_counts(a) == eval_counts(b)


def test_growing_gold_never_changes_existing_parts_and_tops_up_strata() -> None:
    first = assign_gold_parts(gold(STRATA, "r1"), EMPTY, share=1 / 3, seed=0)
    second_new = gold({**STRATA, "uf\x1fsafety": 12}, "r2")
    second = assign_gold_parts(second_new, first, share=1 / 3, seed=0)
    assert set(second["pair_id"]) == set(second_new["pair_id"])  # only new pairs come back
    both = pl.concat([first, second])
    total = both.height
    assert (both["part"] == EVAL).sum() == round(total / 3)
    totals = dict(both.group_by("stratum").len().iter_rows())
    for stratum, eval_n in eval_counts(both).items():
        assert math.floor(totals[stratum] / 3) <= eval_n <= math.ceil(totals[stratum] / 3)


def test_a_stratum_first_seen_later_matches_assigning_all_at_once() -> None:
    # Integer quotas (share * size whole) leave no remainders, so nothing ties strata together:
    # a stratum that only arrives in the second batch must get the same pairs either way.
    early = gold({"a": 8, "b": 4})
    late = gold({"c": 12})
    stepwise = assign_gold_parts(late, assign_gold_parts(early, EMPTY, 0.25, seed=4), 0.25, seed=4)
    at_once = assign_gold_parts(pl.concat([early, late]), EMPTY, 0.25, seed=4).filter(
        pl.col("stratum") == "c"
    )
    assert stepwise.equals(at_once)


def test_existing_eval_is_never_taken_away() -> None:
    existing = pl.DataFrame({"pair_id": ["x1", "x2"], "part": [EVAL, EVAL], "stratum": ["s", "s"]})
    parts = assign_gold_parts(gold({"s": 4}), existing, share=0.25, seed=0)
    assert parts["part"].unique().to_list() == [TRAIN]


def test_nothing_new_gives_an_empty_table() -> None:
    parts = assign_gold_parts(gold({}), EMPTY, share=0.3, seed=0)
    assert parts.height == 0
    assert parts.columns == ["pair_id", "part", "stratum"]


def test_reassigning_a_known_pair_is_an_error() -> None:
    first = assign_gold_parts(gold({"s": 3}), EMPTY, share=0.3, seed=0)
    with pytest.raises(ValueError, match="already assigned"):
        assign_gold_parts(gold({"s": 3}), first, share=0.3, seed=0)
    with pytest.raises(ValueError):
        assign_gold_parts(gold({"s": 3}), EMPTY, share=1.5, seed=0)
