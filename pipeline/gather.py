"""The pool rows and attributes of an id list, gathered once, a task per pool partition.

Judging an id list (evaluation gold, the silver seed, retrieved pairs) runs in shards, and each
shard used to look its pairs up in the whole pool and the whole attributes table: the pool's
pair_id column (about 2.6 GB at 40M pairs) read once per shard. A gather reads the pool once
instead: one task per pool partition reads its parts' pair_id columns, then the other columns
only from the row groups that hold a listed pair, with their attributes from the attributes
parts of that partition (pipeline/covers.py), and writes them under `_shuffle/gather/<token>/`.
Each shard then reads its records from there, which holds only the list's rows. The scratch is
removed when the step ends.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import polars as pl

from pipeline.covers import scan_meeting
from pipeline.parts import read_ids
from pipeline.stage import SHUFFLE, Partition, _Timed
from schemas.errors import InputError
from schemas.pair import POOL_SCHEMA, PairRecord

if TYPE_CHECKING:
    from pipeline.parts import Receipt
    from pipeline.store import Workspace

GATHER = f"{SHUFFLE}/gather"
_NONE = pl.DataFrame(schema={"pair_id": pl.Utf8})


def _parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


@dataclass(frozen=True)
class Gather:
    """One id list's gather: `run` is its partition task, `records` and `attributes` its readers."""

    token: str
    name: ClassVar[str] = "gather"

    @classmethod
    def start(cls, ws: Workspace, pair_ids: list[str]) -> Gather:
        """A new gather of `pair_ids` (written to its scratch folder for the tasks to read)."""
        gather = cls(uuid.uuid4().hex[:12])
        ids = pl.DataFrame({"pair_id": list(dict.fromkeys(pair_ids))}, schema={"pair_id": pl.Utf8})
        ws.write_bytes(f"{gather.folder}/ids.parquet", _parquet(ids))
        return gather

    @property
    def folder(self) -> str:
        return f"{GATHER}/{self.token}"

    def _read(self, ws: Workspace, kind: str) -> pl.DataFrame | None:
        names = sorted(n for n in ws.listdir(self.folder) if n.startswith(f"{kind}-"))
        frames = [pl.read_parquet(io.BytesIO(ws.read_bytes(f"{self.folder}/{n}"))) for n in names]
        return pl.concat(frames, how="vertical_relaxed") if frames else None

    def run(self, ws: Workspace, partition: Partition) -> Receipt:
        """The partition's rows (dropped or not) on the list, and their attributes, as scratch files."""
        timer = _Timed()
        ids = pl.read_parquet(io.BytesIO(ws.read_bytes(f"{self.folder}/ids.parquet")))["pair_id"]
        found = (read_ids(ws, partition.table, file, ids, POOL_SCHEMA.names, first=first, rows=count)
                 for file, _, first, count in partition.ranges)
        frames = [frame for frame in found if frame is not None]
        rows = _NONE
        if frames:
            rows = pl.concat(frames, how="vertical_relaxed")
            rows = rows.unique("pair_id", keep="first", maintain_order=True)
        attributes = 0
        if rows.height:
            ws.write_bytes(f"{self.folder}/pool-{partition.index:06d}.parquet", _parquet(rows))
            if ws.has_table("attributes") and ws.row_count("attributes"):
                found = scan_meeting(ws, "attributes", partition).filter(
                    pl.col("pair_id").is_in(rows["pair_id"].implode())).collect()
                if found.height:
                    ws.write_bytes(f"{self.folder}/attributes-{partition.index:06d}.parquet", _parquet(found))
                attributes = found.height
        return timer.receipt(self.name, partition.index, partition.rows, [], found=rows.height,
                             attributes=attributes)

    def records(self, ws: Workspace, pair_ids: list[str]) -> list[PairRecord]:
        """The gathered records of `pair_ids`, in that order; ids the pool lacks are a clear error."""
        wanted = list(dict.fromkeys(pair_ids))
        rows = self._read(ws, "pool")
        found = {} if rows is None else {
            r["pair_id"]: r for r in rows.filter(pl.col("pair_id").is_in(wanted)).iter_rows(named=True)}
        missing = [p for p in wanted if p not in found]
        if missing:
            raise InputError(f"{len(missing)} pair ids are not in the pool of {ws.uri}, e.g. {missing[:3]}")
        return [PairRecord.from_row(found[p]) for p in wanted]

    def attribute_rows(self, ws: Workspace, pair_ids: list[str]) -> pl.DataFrame:
        """The gathered attributes rows of `pair_ids`, in table order (the last row of a pair wins)."""
        rows = self._read(ws, "attributes")
        return _NONE if rows is None else rows.filter(pl.col("pair_id").is_in(pair_ids))

    def cleanup(self, ws: Workspace) -> None:
        ws.remove(self.folder)
