"""Held-out gold: a seeded, stratified, append-only split into "train" and "eval" parts.

The "eval" part is what keeps every reported accuracy honest: nothing trains on it, sees it as a
few-shot example or uses it as a retrieval anchor. Gold grows every round, so the split is
append-only: a pair's part is fixed the first time it is assigned and only new pairs are placed,
topping up each stratum (source x task category) towards its share of evaluation pairs.
"""

from __future__ import annotations

import math

import polars as pl
import xxhash

TRAIN = "train"
EVAL = "eval"
STRATUM_SEP = "\x1f"

_PARTS_SCHEMA = {"pair_id": pl.Utf8, "part": pl.Utf8, "stratum": pl.Utf8}
_TOL = 1e-9


def stratum_key(source: str, task_category: str | None) -> str:
    """The stratum a gold pair belongs to: "source\\x1ftask_category"."""
    return f"{source}{STRATUM_SEP}{task_category or ''}"


def pair_rank(seed: int, pair_id: str) -> int:
    """Seeded pseudo-random rank of a pair: the order in which a stratum's new pairs take eval."""
    return xxhash.xxh3_64_intdigest(f"{seed}:{pair_id}".encode())


def _quota(share: float, total: int) -> float:
    """share * total, snapped to an integer when float error put it a hair off one (0.7 * 10)."""
    q = share * total
    return float(round(q)) if abs(q - round(q)) < _TOL else q


def _eval_targets(
    totals: dict[str, int], existing_eval: dict[str, int], new_counts: dict[str, int], share: float, seed: int
) -> dict[str, int]:
    """Eval count per stratum: floor or ceil of share * total, largest remainders get the ceil.

    Largest remainder keeps the overall eval count at round(share * overall) even when most
    strata hold a single pair (each would round to 0 on its own). Bounds: never below a
    stratum's existing eval count (parts never change), never above what its new pairs allow.
    """
    overall = _quota(share, sum(totals.values()))
    wanted = round(overall)
    lows: dict[str, int] = {}
    highs: dict[str, int] = {}
    remainders: dict[str, float] = {}
    for s, total in totals.items():
        q = _quota(share, total)
        have, room = existing_eval.get(s, 0), existing_eval.get(s, 0) + new_counts.get(s, 0)
        lows[s] = min(max(have, math.floor(q)), room)
        highs[s] = min(room, max(have, math.ceil(q)))
        remainders[s] = q - math.floor(q)
    targets = dict(lows)
    extra = wanted - sum(lows.values())
    # Deterministic priority: bigger remainder first, then a seeded hash of the stratum name.
    order = sorted(
        (s for s in totals if highs[s] > lows[s]),
        key=lambda s: (-remainders[s], pair_rank(seed, s), s),
    )
    for s in order:
        if extra <= 0:
            break
        targets[s] += 1
        extra -= 1
    return targets


def _count_by(frame: pl.DataFrame, key: str = "stratum") -> dict[str, int]:
    if frame.height == 0:
        return {}
    counts = frame.group_by(key).len()
    return dict(zip(counts[key].to_list(), counts["len"].to_list(), strict=True))


def assign_gold_parts(new: pl.DataFrame, existing: pl.DataFrame, share: float, seed: int) -> pl.DataFrame:
    """Parts for gold pairs not yet assigned: (pair_id, part, stratum) for the `new` rows only.

    `new` has (pair_id, stratum); `existing` has (pair_id, part, stratum) with part in
    {"train", "eval"}. Within each stratum the new pairs are ordered by a seeded xxh3 hash of
    their id and the first ones take "eval" until the stratum reaches its target (see
    `_eval_targets`). Same inputs give the same output whatever their row order; the result is
    sorted by pair_id.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"gold eval share must be in [0, 1], got {share}")
    if new.height == 0:
        return pl.DataFrame(schema=_PARTS_SCHEMA)
    new = new.select(pl.col("pair_id").cast(pl.Utf8), pl.col("stratum").cast(pl.Utf8))
    if new["pair_id"].n_unique() != new.height:
        raise ValueError("new gold pairs contain duplicate pair_id values")
    if existing.height:
        existing = existing.select(
            pl.col("pair_id").cast(pl.Utf8), pl.col("part").cast(pl.Utf8), pl.col("stratum").cast(pl.Utf8)
        )
        bad_parts = set(existing["part"].unique().to_list()) - {TRAIN, EVAL}
        if bad_parts:
            raise ValueError(f"existing gold parts must be 'train' or 'eval', found {sorted(bad_parts)}")
        overlap = new.join(existing, on="pair_id", how="semi")
        if overlap.height:
            raise ValueError(f"{overlap.height} new gold pairs are already assigned a part")
    else:
        existing = pl.DataFrame(schema=_PARTS_SCHEMA)

    new_counts = _count_by(new)
    existing_counts = _count_by(existing)
    existing_eval = _count_by(existing.filter(pl.col("part") == EVAL))
    totals = {
        s: new_counts.get(s, 0) + existing_counts.get(s, 0) for s in set(new_counts) | set(existing_counts)
    }
    targets = _eval_targets(totals, existing_eval, new_counts, share, seed)
    take = pl.DataFrame(
        {"stratum": list(targets), "take": [targets[s] - existing_eval.get(s, 0) for s in targets]},
        schema={"stratum": pl.Utf8, "take": pl.Int64},
    )
    ranked = (
        new.with_columns(
            pl.Series("rank", [pair_rank(seed, p) for p in new["pair_id"].to_list()], dtype=pl.UInt64)
        )
        .sort(["stratum", "rank", "pair_id"])
        .with_columns(pl.int_range(pl.len()).over("stratum").alias("position"))
        .join(take, on="stratum", how="left")
    )
    return ranked.select(
        "pair_id",
        pl.when(pl.col("position") < pl.col("take"))
        .then(pl.lit(EVAL))
        .otherwise(pl.lit(TRAIN))
        .alias("part"),
        "stratum",
    ).sort("pair_id")
