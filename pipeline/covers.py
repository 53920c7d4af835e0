"""Which parts of a side table can hold a partition's pairs.

A partition task that writes rows of a side table (vectors, scores, attributes) derives every row
from the pool rows of its partition. Its parts say so: each part's manifest entry carries
`covers`, the source table and the (part file, first row, rows) ranges of the partition. A later
task of any partition then reads only the parts whose ranges meet its own, instead of the key
column of the whole table once per task (at 40M pairs in 400 partitions that is 400 reads of 40M
ids per stage).

The rule errs toward reading: a part without `covers` (written before, by a driver, by a
compaction or by a keyed commit that rewrote it) or whose ranges name a source part that the
source table no longer lists (the pool was rewritten) may hold any pair, so every task reads it.
One rewrite is traced instead: a compaction (pipeline/pool_compact.py) records which loose parts
it rewrote into which clustered parts (`<table>/_compactions/<token>.json`). A range naming a
compacted part then meets the partitions that hold any of that compaction's parts, as long as
every one of them is still listed; a missing or unreadable record, or a part gone since, and
every task reads it again. Parts are immutable and their file names unique, so a listed
(file, row) always names the same pair.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from pipeline.parts import Receipt
    from pipeline.stage import Partition
    from pipeline.store import Workspace

COVERS = "covers"
MOVED = "_compactions"
"""The folder of a table where each compaction records the parts it rewrote and the new ones."""


def covering(partition: Partition) -> dict[str, Any]:
    """What a part written from `partition` carries in its manifest entry."""
    ranges = [[file, first, rows] for file, _, first, rows in partition.ranges]
    return {"table": partition.table, "ranges": ranges}


def tagged(part: Receipt, partition: Partition | None) -> Receipt:
    """`part` (a receipt of `write_part`) marked as derived from `partition`'s rows only."""
    if partition is not None:
        part[COVERS] = covering(partition)
    return part


def parts_meeting(ws: Workspace, table: str, partition: Partition | None) -> list[dict[str, Any]]:
    """The manifest entries of `table` that may hold rows of `partition`'s pairs (every entry
    without a partition), in manifest order."""
    shards: list[dict[str, Any]] = ws.manifest(table)["shards"] if ws.has_table(table) else []
    return meeting(ws, shards, partition)


def meeting(ws: Workspace, shards: list[dict[str, Any]], partition: Partition | None) -> list[dict[str, Any]]:
    """The entries among `shards` (of a manifest) that may hold rows of `partition`'s pairs."""
    if partition is None:
        return shards
    mine: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for file, _, first, rows in partition.ranges:
        mine[file].append((first, first + rows))
    live: set[str] | None = None  # read once, when a tagged part is met
    moved: dict[str, frozenset[str]] | None = None  # read once, when a compacted part is named

    def meets(file: str, first: int, rows: int) -> bool:
        nonlocal live, moved
        if live is None:
            live = {s["file"] for s in ws.manifest(partition.table)["shards"]}
        if file in live:
            return rows > 0 and any(first < stop and start < first + rows
                                    for start, stop in mine.get(file, ()))
        if moved is None:
            moved = moved_parts(ws, partition.table, live)
        now_in = moved.get(file)  # a compacted part's rows now lie in its compaction's parts
        return now_in is None or not now_in.isdisjoint(mine)

    out = []
    for shard in shards:
        covers = shard.get(COVERS)
        if not covers or covers.get("table") != partition.table:
            out.append(shard)
            continue
        if any(meets(file, first, rows) for file, first, rows in covers["ranges"]):
            out.append(shard)
    return out


def moved_parts(ws: Workspace, table: str, live: set[str]) -> dict[str, frozenset[str]]:
    """Part -> the parts a compaction of `table` rewrote it into, for the compactions whose new
    parts are all still listed in `live` (the others are left out: their old parts may be anywhere)."""
    out: dict[str, frozenset[str]] = {}
    for name in ws.listdir(f"{table}/{MOVED}"):
        try:
            record = ws.read_json(f"{table}/{MOVED}/{name}") or {}
        except ValueError:  # unreadable: its parts are read by every task, as without a record
            continue
        parts = frozenset(record.get("parts", []))
        if parts and parts <= live:
            out.update(dict.fromkeys(record.get("replaced", []), parts))
    return out


def scan_meeting(ws: Workspace, table: str, partition: Partition | None,
                 schema: pa.Schema | None = None) -> pl.LazyFrame:
    """A lazy frame over the parts of `table` that may hold `partition`'s pairs (`Workspace.scan`
    of those parts; the whole table without a partition)."""
    return ws.scan(table, schema=schema, shards=parts_meeting(ws, table, partition))
