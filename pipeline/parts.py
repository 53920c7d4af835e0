"""Parts first, one commit per table: how workers write a stage's rows and a driver lands them.

A worker writes part files (never a manifest) and hands back their receipts; the driver makes one
commit per table through the store's commit (pipeline/store_commit.py), which holds the table's
lock, so nothing here can overwrite another writer's manifest. Under the lock the commit re-checks
unique keys against what other writers committed since the parts were planned and rewrites only
the parts that hold such rows. Parts that never get committed are deleted by `discard`; a killed
process leaves orphans that nobody reads (`synpref doctor` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.covers import COVERS
from pipeline.store_commit import Plan, commit, read_keys, shards_since

if TYPE_CHECKING:
    from pipeline.store import Workspace

Receipt = dict[str, Any]
"""A written part: file, rows, sha256, bytes (the manifest's shard entry)."""


def conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    return rows.select(schema.names).cast(schema)


def write_part(ws: Workspace, table: str, rows: pa.Table, schema: pa.Schema | None = None, *,
               group_rows: int | None = None) -> Receipt:
    """Write `rows` as one uncommitted part of `table` (the store's part format, row groups of
    `group_rows` rows: pyarrow's default when None); its receipt."""
    if schema is not None:
        rows = conform(rows, schema)
    return ws._write_shard(table, rows, 0, group_rows).entry()  # the store's one part writer


def read_part(ws: Workspace, table: str, receipt: Receipt, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(ws.path(table, receipt["file"]), columns=columns, filesystem=ws.fs)


def read_ids(ws: Workspace, table: str, file: str, wanted: pl.Series, columns: list[str], *,
             first: int = 0, rows: int | None = None) -> pl.DataFrame | None:
    """The rows of one part (rows `first` to `first + rows` of it) whose pair_id is in `wanted`,
    in part order, or None. The pair_id column is read from the row groups whose statistics may
    hold a wanted id (all of them in a part of unsorted hashes, one or two per id in a part sorted
    by pair_id), the other columns only from the row groups that hold a wanted pair."""
    with ws.fs.open(ws.path(table, file), "rb") as fh:
        parquet = pq.ParquetFile(fh)
        meta = parquet.metadata
        bounds = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        end = int(bounds[-1]) if rows is None else first + rows
        ids = np.sort(wanted.drop_nulls().unique().to_numpy().astype(str))
        candidates = [g for g in range(meta.num_row_groups)
                      if bounds[g] < end and bounds[g + 1] > first and _may_hold(meta.row_group(g), ids)]
        if not candidates:
            return None
        keys = pl.from_arrow(parquet.read_row_groups(candidates, columns=["pair_id"]))
        assert isinstance(keys, pl.DataFrame)
        at = np.concatenate([np.arange(bounds[g], bounds[g + 1], dtype=np.int64) for g in candidates])
        keys = keys.with_columns(row=pl.Series(at))
        keys = keys.filter((pl.col("row") >= first) & (pl.col("row") < end))
        hit = keys.filter(pl.col("pair_id").is_in(wanted.implode()))["row"].to_numpy().astype(np.int64)
        if not len(hit):
            return None
        groups = np.unique(np.searchsorted(bounds, hit, side="right") - 1)
        read = parquet.read_row_groups(groups.tolist(), columns=columns)
    sizes = np.diff(bounds)[groups]
    starts = dict(zip(groups.tolist(), (np.cumsum(sizes) - sizes).tolist(), strict=True))
    group_of = np.searchsorted(bounds, hit, side="right") - 1
    local = np.array([starts[g] for g in group_of.tolist()], np.int64) + hit - bounds[group_of]
    frame = pl.from_arrow(read.take(pa.array(local)))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _may_hold(group: pq.RowGroupMetaData, ids: np.ndarray) -> bool:
    """Whether a row group's pair_id statistics leave room for one of `ids` (sorted)."""
    for c in range(group.num_columns):
        column = group.column(c)
        if column.path_in_schema != "pair_id":
            continue
        stats = column.statistics
        if stats is None or not stats.has_min_max:
            return True
        lo, hi = stats.min, stats.max
        lo = lo.decode() if isinstance(lo, bytes) else str(lo)
        hi = hi.decode() if isinstance(hi, bytes) else str(hi)
        at = int(np.searchsorted(ids, lo, side="left"))
        return at < len(ids) and ids[at] <= hi
    return True


def discard(ws: Workspace, table: str, receipts: list[Receipt]) -> None:
    """Delete parts that will not be committed (a receipt of no part, without a file, is skipped)."""
    for r in receipts:
        if r.get("file"):
            ws.remove(f"{table}/{r['file']}")


@dataclass
class KeyedParts:
    """A commit of parts keyed by `key`: rows whose key other writers committed after `seen`
    (the manifest's shards when the parts were planned) are left out, part by part."""

    ws: Workspace
    table: str
    parts: list[Receipt]
    schema: pa.Schema
    key: list[str]
    seen: list[dict[str, Any]]
    obsolete: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return sum(int(p["rows"]) for p in self.parts)

    def __call__(self, current: dict[str, Any] | None) -> Plan:
        shards = list(current["shards"]) if current else []
        fresh = shards_since(self.seen, shards)
        if fresh and self.parts:
            existing = read_keys(self.ws, self.table, fresh, self.key)
            self.parts = [p for p in (self._without(p, existing) for p in self.parts) if p is not None]
        self.seen = shards
        if not self.parts:
            return Plan(None if current is not None else [], self.schema, self.obsolete)
        return Plan([*shards, *self.parts], self.schema, self.obsolete)

    def _without(self, part: Receipt, existing: pl.DataFrame) -> Receipt | None:
        if existing.height == 0:
            return part
        keys = pl.from_arrow(read_part(self.ws, self.table, part, self.key))
        assert isinstance(keys, pl.DataFrame)
        keep = keys.with_row_index("__row").join(existing, on=self.key, how="anti", maintain_order="left")
        if keep.height == keys.height:
            return part
        self.obsolete.append(part["file"])
        if keep.height == 0:
            return None
        rows = read_part(self.ws, self.table, part).take(pa.array(keep["__row"].to_numpy()))
        kept = write_part(self.ws, self.table, rows)
        if COVERS in part:  # a subset of the part's rows comes from the same source rows
            kept[COVERS] = part[COVERS]
        return kept


def commit_keyed_parts(ws: Workspace, table: str, parts: list[Receipt], schema: pa.Schema,
                       key: str | list[str], seen: list[dict[str, Any]] | None = None) -> int:
    """Commit `parts` (distinct keys among them) to `table` as one new version; rows whose key is
    committed already are dropped. Returns the rows that landed."""
    cols = [key] if isinstance(key, str) else list(key)
    plan = KeyedParts(ws, table, [p for p in parts if int(p["rows"])], schema, cols,
                      [] if seen is None else seen)
    discard(ws, table, [p for p in parts if not int(p["rows"])])
    commit(ws, table, plan)
    return plan.written
