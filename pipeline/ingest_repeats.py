"""How an ingest tells a repeat: a row's origin, one key bucket split into new and repeated rows,
and the `dropped` rows that record a repeat from another origin.

A pair is keyed by its content (pair_id) and remembered by where it came from (origin: source and
source_id). A repeat from the same origin is a re-ingest and adds nothing; one from another origin
is an exact duplicate, recorded in `dropped` under its origin's hash.
"""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa

from pipeline.sources.records import row_id
from schemas.pair import DROPPED_SCHEMA


def split_bucket(own: pl.DataFrame, committed: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(new rows, repeats with `same`: same origin as the pooled or first-seen pair) of one bucket."""
    own = own.sort("row")
    if committed is not None:
        known = committed.unique("pair_id").rename({"origin": "known_origin"})
        own = own.join(known, on="pair_id", how="left", maintain_order="left")
    else:
        own = own.with_columns(known_origin=pl.lit(None, pl.Utf8))
    own = own.with_columns(first=pl.col("pair_id").is_first_distinct())
    new = pl.col("known_origin").is_null() & pl.col("first")
    reference = pl.coalesce(pl.col("known_origin"), pl.col("origin").first().over("pair_id"))
    own = own.with_columns(new=new, same=pl.col("origin") == reference)
    return own.filter(pl.col("new")), own.filter(~pl.col("new"))


def duplicate_row_id(source: str, source_id: str) -> str:
    """The `dropped` key of a row that repeats a pooled pair: its origin, hashed."""
    return row_id(source, source_id)


def origin_expr() -> pl.Expr:
    return pl.concat_str([pl.col("source"), pl.col("source_id")], separator="\x1f").alias("origin")


def origins_of(table: pa.Table | pl.DataFrame) -> pl.DataFrame:
    frame = table if isinstance(table, pl.DataFrame) else pl.from_arrow(
        table.select(["pair_id", "source", "source_id"]))
    assert isinstance(frame, pl.DataFrame)
    return frame.select("pair_id", origin_expr())


def duplicate_records(dups: pl.DataFrame) -> pa.Table:
    """`dropped` rows for pairs (pair_id, origin) that repeat a pooled pair from another origin."""
    records = []
    for pair_id, origin in dups.select("pair_id", "origin").iter_rows():
        source, source_id = origin.split("\x1f", 1)
        detail = {"source": source, "source_id": source_id}
        records.append({
            "pair_id": duplicate_row_id(source, source_id), "stage": "ingest", "reason": "exact-duplicate",
            "kept_pair_id": pair_id, "similarity": 1.0,
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True),
        })
    return pa.Table.from_pydict(
        {name: [r[name] for r in records] for name in DROPPED_SCHEMA.names}, schema=DROPPED_SCHEMA)
