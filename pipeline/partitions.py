"""Pool partitions: contiguous row ranges of the pool's parts, planned from its manifest alone,
and their reads. Every stage maps over these (pipeline/stage.py); a task that looks up a sorted
slice of ids on a clustered pool gets the parts of its own slice as one (`partition_holding`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.pool import CLUSTERED, DroppedLookup, clustered_share, parts_holding
from pipeline.store import Workspace

POOL = "pool"
ROWS_PER_PARTITION = 100_000


@dataclass(frozen=True)
class Partition:
    """Row ranges of a table's parts (the pool unless `table` says otherwise): (file, sha256,
    first row, rows) per range."""

    index: int
    ranges: tuple[tuple[str, str, int, int], ...]
    table: str = POOL

    @property
    def rows(self) -> int:
        return sum(r[3] for r in self.ranges)


def plan_partitions(ws: Workspace, rows_per_partition: int = ROWS_PER_PARTITION,
                    table: str = POOL) -> list[Partition]:
    """`table` (the pool) cut into partitions of about `rows_per_partition` rows, from its
    manifest only."""
    if not ws.has_table(table):
        return []
    if table == POOL:  # index `dropped` once here, not in every task that asks it about its ids
        DroppedLookup.open(ws)
    step = max(1, rows_per_partition)
    out: list[Partition] = []
    current: list[tuple[str, str, int, int]] = []
    filled = 0
    for shard in ws.manifest(table)["shards"]:
        start, rows = 0, int(shard["rows"])
        while start < rows:
            take = min(rows - start, step - filled)
            current.append((shard["file"], shard["sha256"], start, take))
            start, filled = start + take, filled + take
            if filled == step:
                out.append(Partition(len(out), tuple(current), table))
                current, filled = [], 0
    if current:
        out.append(Partition(len(out), tuple(current), table))
    return out


def partition_holding(ws: Workspace, pair_ids: list[str]) -> Partition | None:
    """The pool parts that may hold `pair_ids` as one partition, on a clustered pool (None on
    another: every part may hold any id): a task looking up a sorted slice of ids then reads side
    tables only from the parts derived from its own (pipeline/covers.py)."""
    shards = ws.manifest(POOL)["shards"] if ws.has_table(POOL) else []
    if clustered_share(ws, shards) < CLUSTERED:
        return None
    held = parts_holding(shards, sorted(set(pair_ids)))
    return Partition(-1, tuple((s["file"], s["sha256"], 0, int(s["rows"])) for s in held))


def read_partition(ws: Workspace, partition: Partition, columns: list[str],
                   gone: pl.DataFrame | None = None, *,
                   lookup: DroppedLookup | None = None) -> Iterator[pl.DataFrame]:
    """The partition's active rows (all rows, given an empty `gone`), one frame per part range;
    every part checked by sha256. Without `gone`, the partition's ids are looked up in `dropped`
    once (`lookup`, or one opened here): only the index buckets of those ids are read."""
    parts: Iterator[tuple[bytes, int, int]] = (
        (_checked_part(ws, partition.table, file, sha256), start, rows)
        for file, sha256, start, rows in partition.ranges)
    if gone is None:  # one lookup for the partition: the ids of all its part ranges together
        lookup = lookup if lookup is not None else DroppedLookup.open(ws)
        held = list(parts)
        ids = [pl.Series("pair_id", read_range(raw, ["pair_id"], start, rows).column("pair_id"))
               for raw, start, rows in held]
        gone = lookup.gone(pl.concat(ids) if ids else pl.Series("pair_id", [], pl.Utf8))
        parts = _drained(held)
    for raw, start, rows in parts:
        frame = pl.from_arrow(read_range(raw, columns, start, rows))
        assert isinstance(frame, pl.DataFrame)
        if gone.height:
            frame = frame.join(gone, on="pair_id", how="anti", maintain_order="left")
        if frame.height:
            yield frame


def read_range(raw: bytes, columns: list[str], start: int, rows: int) -> pa.Table:
    """Rows `start` to `start + rows` of a part's bytes, decoding only the row groups that hold
    them (a partition that takes part of a clustered part's small row groups decodes only those)."""
    parquet = pq.ParquetFile(pa.BufferReader(raw))
    meta = parquet.metadata
    bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    groups = [g for g in range(meta.num_row_groups) if bounds[g + 1] > start and bounds[g] < start + rows]
    if not groups:
        return parquet.schema_arrow.empty_table().select(columns)
    return parquet.read_row_groups(groups, columns=columns).slice(start - int(bounds[groups[0]]), rows)


def _drained(items: list[tuple[bytes, int, int]]) -> Iterator[tuple[bytes, int, int]]:
    """`items` in order, each let go once handed out."""
    items.reverse()
    while items:
        yield items.pop()


def _checked_part(ws: Workspace, table: str, file: str, sha256: str) -> bytes:
    """A part's bytes checked against its manifest sha256 (a missing or altered part: WorkspaceError)."""
    return ws.part_bytes(table, {"file": file, "sha256": sha256})
