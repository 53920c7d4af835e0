"""The pool as later stages see it: every ingested pair minus every pair a cleaning stage dropped."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from pipeline.store import Workspace
from schemas.pair import DROPPED_SCHEMA, POOL_SCHEMA, PairRecord

INGEST_STAGE = "ingest"
"""`dropped` rows of this stage are source rows that never entered the pool (ties, undecidable
majorities, repeats of a pooled pair), keyed by their origin: they remove no pooled pair."""


def active_pool(ws: Workspace) -> pl.LazyFrame:
    """Lazy frame over `pool` without the pairs a cleaning stage recorded in `dropped`."""
    pool = ws.scan("pool", schema=POOL_SCHEMA)
    if ws.has_table("dropped") and ws.row_count("dropped"):
        dropped = (ws.scan("dropped", schema=DROPPED_SCHEMA).filter(pl.col("stage") != INGEST_STAGE)
                   .select("pair_id").unique())
        pool = pool.join(dropped, on="pair_id", how="anti")
    return pool


def dropped_ids(ws: Workspace) -> pl.DataFrame:
    """The distinct pair_ids that cleaning removed from the pool, as a one-column frame (for anti-joins).

    Ingest-stage rows are left out: they name source rows, not pooled pairs (a tie recorded by
    an older synpref under its content id must not hide a decided pair with the same responses).
    """
    if not ws.has_table("dropped") or not ws.row_count("dropped"):
        return pl.DataFrame(schema={"pair_id": pl.Utf8})
    frame = pl.from_arrow(ws.read("dropped", columns=["pair_id", "stage"]))
    assert isinstance(frame, pl.DataFrame)
    return frame.filter(pl.col("stage") != INGEST_STAGE).select("pair_id").unique()


def load_records(ws: Workspace, pair_ids: Iterable[str]) -> list[PairRecord]:
    """The pool's pairs with these ids, in the order given; KeyError names ids not in the pool."""
    ids = list(pair_ids)
    if not ids:
        return []
    frame = ws.scan("pool", schema=POOL_SCHEMA).filter(pl.col("pair_id").is_in(ids)).collect()
    rows = {row["pair_id"]: row for row in frame.unique("pair_id", keep="first").to_dicts()}
    missing = [i for i in dict.fromkeys(ids) if i not in rows]
    if missing:
        raise KeyError(f"{len(missing)} pair_id(s) not in the pool, e.g. {missing[:3]}")
    return [PairRecord.from_row(rows[i]) for i in ids]
