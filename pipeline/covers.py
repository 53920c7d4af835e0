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
Parts are immutable and their file names unique, so a listed (file, row) always names the same pair.
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
    live: set[str] | None = None
    out = []
    for shard in shards:
        covers = shard.get(COVERS)
        if not covers or covers.get("table") != partition.table:
            out.append(shard)
            continue
        ranges = covers["ranges"]
        if live is None:
            live = {s["file"] for s in ws.manifest(partition.table)["shards"]}
        if any(file not in live for file, _, _ in ranges) or any(
            rows > 0 and first < stop and start < first + rows
            for file, first, rows in ranges for start, stop in mine.get(file, ())
        ):
            out.append(shard)
    return out


def scan_meeting(ws: Workspace, table: str, partition: Partition | None,
                 schema: pa.Schema | None = None) -> pl.LazyFrame:
    """A lazy frame over the parts of `table` that may hold `partition`'s pairs (`Workspace.scan`
    of those parts; the whole table without a partition)."""
    return ws.scan(table, schema=schema, shards=parts_meeting(ws, table, partition))
