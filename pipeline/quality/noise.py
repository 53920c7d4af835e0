"""Known label noise on any pool table: random flips and a "longer is better" bias, seeded.

A flip swaps chosen and rejected, which changes the pair's id (ids hash the content in order),
so every row of the result is recorded in an `injected` table: the id in the noisy pool, the
original id, whether it was flipped and why. That table is the ground truth every detection
figure is computed against, and `restore_labels` undoes the noise exactly.

Which rows get noise depends only on the seed and the set of pair ids, never on row order.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from schemas.errors import ConfigError
from schemas.pair import POOL_SCHEMA, compute_pair_id

INJECTED_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("original_pair_id", pa.string()),
        ("flipped", pa.bool_()),
        ("kind", pa.string()),
        ("protected", pa.bool_()),
        ("seed", pa.int64()),
    ],
    metadata={"synpref.schema": "quality/injected", "synpref.version": "1"},
)
"""One row per pool pair: `kind` is `random`, `length` (flipped toward the longer response),
`length-kept` (picked for the bias but the longer response was already chosen) or `none`."""


@dataclass(frozen=True)
class NoiseConfig:
    flip_share: float = 0.10
    length_bias: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("flip_share", "length_bias"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.flip_share + self.length_bias > 1.0:
            raise ConfigError("flip_share + length_bias must not exceed 1")


@dataclass(frozen=True)
class NoisyPool:
    pool: pa.Table
    injected: pa.Table

    @property
    def flipped_ids(self) -> set[str]:
        frame = pl.from_arrow(self.injected)
        return set(frame.filter(pl.col("flipped"))["pair_id"].to_list())  # type: ignore[union-attr]


def inject_noise(pool: pa.Table, cfg: NoiseConfig, *, protected: Collection[str] = ()) -> NoisyPool:
    """Flip `flip_share` of the unprotected rows at random, and set the longer response as
    chosen for another `length_bias` share; `protected` pair ids (the gold seed) stay untouched.
    """
    for column in ("pair_id", "conversation", "chosen", "rejected"):
        if column not in pool.column_names:
            raise ValueError(f"pool table lacks column {column!r}")
    ids = pool.column("pair_id").to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError("pool table has repeated pair_id values; deduplicate it first")
    protected_set = set(protected)
    candidates = sorted(i for i in ids if i not in protected_set)
    rng = np.random.default_rng(cfg.seed)
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    n_length = round(cfg.length_bias * len(candidates))
    n_random = round(cfg.flip_share * len(candidates))
    length_pick = set(order[:n_length])
    random_pick = set(order[n_length : n_length + n_random])

    rows = pool.to_pylist()
    out_rows, injected = [], []
    for row in rows:
        pid = row["pair_id"]
        kind = "none"
        if pid in random_pick:
            kind = "random"
        elif pid in length_pick:
            longer_rejected = len(row["rejected"]) > len(row["chosen"])
            kind = "length" if longer_rejected else "length-kept"
        flip = kind in ("random", "length")
        new = _flipped(row) if flip else row
        out_rows.append(new)
        injected.append({"pair_id": new["pair_id"], "original_pair_id": pid, "flipped": flip,
                         "kind": kind, "protected": pid in protected_set, "seed": cfg.seed})
    if len({r["pair_id"] for r in out_rows}) != len(out_rows):
        raise ValueError("a flipped pair equals another pair of the pool (both orders are stored)")
    schema = pool.schema if set(pool.schema.names) != set(POOL_SCHEMA.names) else POOL_SCHEMA
    return NoisyPool(pool=pa.Table.from_pylist(out_rows, schema=schema),
                     injected=pa.Table.from_pylist(injected, schema=INJECTED_SCHEMA))


def restore_labels(noisy: pa.Table, injected: pa.Table) -> pa.Table:
    """Undo the recorded flips: the rows as they were before `inject_noise`."""
    flipped = set(pl.from_arrow(injected).filter(pl.col("flipped"))["pair_id"].to_list())  # type: ignore[union-attr]
    rows = [_flipped(r) if r["pair_id"] in flipped else r for r in noisy.to_pylist()]
    return pa.Table.from_pylist(rows, schema=noisy.schema)


def seed_batch(pair_ids: Collection[str], size: int, seed: int) -> list[str]:
    """A seeded, order-independent sample of pair ids (the gold seed of a noised copy)."""
    ranked = sorted(pair_ids, key=lambda p: xxhash.xxh64_intdigest(f"{seed}:{p}".encode()))
    return ranked[: max(0, size)]


def _flipped(row: dict) -> dict:
    new = dict(row)
    new["chosen"], new["rejected"] = row["rejected"], row["chosen"]
    new["pair_id"] = compute_pair_id(row["conversation"], new["chosen"], new["rejected"])
    return new
