"""The pool as later stages see it: every ingested pair minus every pair a cleaning stage dropped."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ingest_parts import KEY_RANGE
from pipeline.key_index import DROPPED_KEYS, INGEST_STAGE, IndexState
from pipeline.parts import commit_keyed_parts, read_ids, write_part
from pipeline.store import Workspace
from pipeline.store_commit import first_per_key
from schemas.pair import DROPPED_SCHEMA, POOL_SCHEMA, PairRecord

__all__ = [
    "INGEST_STAGE",
    "DroppedLookup",
    "active_pool",
    "append_dropped",
    "clustered_share",
    "dropped_ids",
    "load_records",
    "parts_holding",
    "pool_rows",
]


def active_pool(ws: Workspace) -> pl.LazyFrame:
    """Lazy frame over `pool` without the pairs a cleaning stage recorded in `dropped`."""
    pool = ws.scan("pool", schema=POOL_SCHEMA)
    dropped = cleaned_out(ws)
    return pool if dropped is None else pool.join(dropped, on="pair_id", how="anti")


def cleaned_out(ws: Workspace) -> pl.LazyFrame | None:
    """Lazy frame of the distinct pair_ids that cleaning removed from the pool (for joins as the
    tables stream by); None when nothing was dropped.

    Ingest-stage rows are left out: they name source rows, not pooled pairs (a tie recorded by
    an older synpref under its content id must not hide a decided pair with the same responses).
    """
    if not ws.has_table("dropped") or not ws.row_count("dropped"):
        return None
    return (ws.scan("dropped", schema=DROPPED_SCHEMA).filter(pl.col("stage") != INGEST_STAGE)
            .select("pair_id").unique())


def dropped_ids(ws: Workspace) -> pl.DataFrame:
    """`cleaned_out`, collected: a one-column frame for anti-joins."""
    dropped = cleaned_out(ws)
    return pl.DataFrame(schema={"pair_id": pl.Utf8}) if dropped is None else dropped.collect()


@dataclass
class DroppedLookup:
    """`dropped` as of one moment, asked about a few ids at a time: each question reads only the
    key-index buckets of its ids (pipeline/key_index.py), never every dropped id.

    `seen` is how many leading parts of the `dropped` manifest the answers cover, and `last` the
    name of the last of them: a keyed commit of drops decided with these answers needs to check
    only the parts committed after those.
    """

    ws: Workspace
    state: IndexState
    seen: int
    last: str
    blocked: list[str] = field(default_factory=list)
    """Ids asked about that `dropped` holds as ingest rows (a tie recorded under its content id by
    an older synpref): active, but a new drop under that id would repeat the key."""

    @classmethod
    def open(cls, ws: Workspace) -> DroppedLookup:
        shards = ws.manifest("dropped")["shards"] if ws.has_table("dropped") else []
        return cls(ws, DROPPED_KEYS.sync(ws, shards), len(shards), shards[-1]["file"] if shards else "")

    def gone(self, ids: pl.Series) -> pl.DataFrame:
        """The ids among `ids` that cleaning removed from the pool (one pair_id column)."""
        found = DROPPED_KEYS.lookup(self.ws, self.state, ids) if self.seen else None
        if found is None:
            return pl.DataFrame(schema={"pair_id": pl.Utf8})
        self.blocked += found.filter(pl.col("ingest"))["pair_id"].to_list()
        return found.filter(~pl.col("ingest")).select("pair_id").unique()

    def present(self, ids: pl.Series) -> pl.Series:
        """The ids among `ids` that `dropped` holds as a key, whatever the stage."""
        found = DROPPED_KEYS.lookup(self.ws, self.state, ids) if self.seen else None
        return pl.Series("pair_id", [], pl.Utf8) if found is None else found["pair_id"].unique()

    def covered(self) -> list[dict[str, object]]:
        """The leading `dropped` parts the answers cover, as in the manifest now ([] when the
        manifest no longer starts with them: a keyed commit then checks every part)."""
        shards = self.ws.manifest("dropped")["shards"] if self.ws.has_table("dropped") else []
        if not self.seen or len(shards) < self.seen or shards[self.seen - 1]["file"] != self.last:
            return []
        return list(shards[: self.seen])

    def receipt(self) -> dict[str, object]:
        """What a task's receipt carries so that the stage's commit checks only newer parts."""
        return {"dropped_seen": self.seen, "dropped_last": self.last}


def append_dropped(ws: Workspace, rows: pa.Table) -> int:
    """Add `dropped` rows whose pair_id the table does not hold yet (the first of repeated keys),
    checking only these keys' index buckets, then, under the commit lock, the parts committed
    since; returns the rows added. The table is created (empty) when it does not exist."""
    rows = first_per_key(rows.select(DROPPED_SCHEMA.names).cast(DROPPED_SCHEMA), ["pair_id"])
    lookup = DroppedLookup.open(ws)
    if rows.num_rows and lookup.seen:
        taken = lookup.present(pl.Series("pair_id", rows.column("pair_id").to_pylist(), pl.Utf8))
        if taken.len():
            taken_ids = pa.array(taken.to_list(), pa.string())
            rows = rows.filter(pc.invert(pc.is_in(rows.column("pair_id"), taken_ids)))
    parts = [write_part(ws, "dropped", rows)] if rows.num_rows else []
    return commit_keyed_parts(ws, "dropped", parts, DROPPED_SCHEMA, "pair_id", seen=lookup.covered())


def parts_holding(shards: list[dict[str, Any]], ids: list[str]) -> list[dict[str, Any]]:
    """The pool parts among `shards` that may hold one of `ids` (sorted): a clustered part whose
    key range holds one of them, and every part that records no range."""
    found = []
    for shard in shards:
        span = shard.get(KEY_RANGE)
        at = bisect.bisect_left(ids, span[0]) if span else 0
        if not span or (at < len(ids) and ids[at] <= span[1]):
            found.append(shard)
    return found


CLUSTERED = 0.9
"""Share of the pool's rows in clustered parts from which id lookups are cut by id range (the
rest, in parts without a key range, is read by every lookup)."""


def clustered_share(ws: Workspace, shards: list[dict[str, Any]] | None = None) -> float:
    """The share of the pool's rows in parts with a key range (clustered ingests): 1.0 when every
    lookup of a sorted slice of ids opens only that slice's parts, 0.0 for an empty pool.
    `shards`: the pool's manifest entries when the caller has read them."""
    if shards is None:
        shards = ws.manifest("pool")["shards"] if ws.has_table("pool") else []
    rows = sum(int(s["rows"]) for s in shards)
    return sum(int(s["rows"]) for s in shards if s.get(KEY_RANGE)) / rows if rows else 0.0


def pool_rows(ws: Workspace, pair_ids: Iterable[str], columns: list[str] | None = None) -> pl.DataFrame:
    """The pool rows of `pair_ids` (each id's first row, in table order), reading only the parts
    that may hold one (`parts_holding`) and in those only the row groups that may
    (`parts.read_ids`): a shard of ids cut from a sorted list reads its own slice of a clustered
    pool, not the pool."""
    wanted = sorted({str(i) for i in pair_ids})
    columns = list(POOL_SCHEMA.names) if columns is None else columns
    empty = pl.from_arrow(POOL_SCHEMA.empty_table()).select(columns)
    assert isinstance(empty, pl.DataFrame)
    if not wanted or not ws.has_table("pool"):
        return empty
    ids = pl.Series("pair_id", wanted, pl.Utf8)
    held = parts_holding(ws.manifest("pool")["shards"], wanted)
    for shard in held if ws.is_local else []:  # a missing or cut part: the store's error naming it
        ws._check_size("pool", shard)
    found = (read_ids(ws, "pool", shard["file"], ids, columns) for shard in held)
    frames = [frame for frame in found if frame is not None]
    if not frames:
        return empty
    return pl.concat(frames, how="vertical_relaxed").unique("pair_id", keep="first", maintain_order=True)


def load_records(ws: Workspace, pair_ids: Iterable[str]) -> list[PairRecord]:
    """The pool's pairs with these ids, in the order given; KeyError names ids not in the pool."""
    ids = list(pair_ids)
    if not ids:
        return []
    rows = {row["pair_id"]: row for row in pool_rows(ws, ids).to_dicts()}
    missing = [i for i in dict.fromkeys(ids) if i not in rows]
    if missing:
        raise KeyError(f"{len(missing)} pair_id(s) not in the pool, e.g. {missing[:3]}")
    return [PairRecord.from_row(rows[i]) for i in ids]


def ids_in_tables(ws: Workspace, tables: Iterable[str], ids: pl.Series) -> pl.Series:
    """Those of `ids` that any of `tables` holds (label tables: gold, silver, verifications), each
    table's pair_id column filtered as it is scanned."""
    found = [ws.scan(t).select("pair_id").filter(pl.col("pair_id").is_in(ids.implode())).collect()["pair_id"]
             for t in tables if ws.has_table(t) and ws.row_count(t)]
    return pl.concat(found).unique() if found else pl.Series("pair_id", [], pl.String)
