"""An ingest's pool parts: staged rows, less their repeats, numbered in source order and written.

The jobs are planned by pipeline/ingest_pool.py once the repeats are known; each one reads only
the scratch batches it names, so they can run anywhere that sees the workspace (tasks on the
ingest flow's workers) and give the same bytes.

A small ingest writes one part per staged batch, in source order. A big one is clustered: one job
per range of pair_ids reads every staged batch, keeps the rows of its range and writes them as
one part sorted by pair_id, in small row groups, with the range it holds (`key_range`) in its
manifest entry. Pair ids are hashes, so an ingest's parts hold disjoint slices of the id space and
a lookup of a few ids (a scoring or judging shard cut from a sorted id list) opens only the parts
whose range holds one of them, and in those only the row groups whose statistics do
(pipeline/pool.py). Rows are numbered (`ingest_seq`) in source order either way.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.parts import Receipt, read_part, write_part
from pipeline.store import Workspace

POOL = "pool"
KEY_RANGE = "key_range"
"""Manifest key of a clustered pool part: its smallest and largest pair_id."""
MAX_SEQ = "max_seq"
"""Receipt key (popped before the commit): the largest ingest_seq of a clustered part."""
CLUSTER_ROWS = 200_000
"""New pairs from which an ingest is clustered by pair_id; a smaller one writes a part per batch."""
PART_ROWS = 50_000
"""Rows per clustered part (about; as many as a staged batch): an ingest of n new pairs gets
ceil(n / PART_ROWS) id ranges, at most `RANGES`. A part's rows are held twice while it is sorted."""
GROUP_ROWS = 8_192
"""Rows per row group of a clustered part: what a lookup of one id reads of it."""
RANGES = 256
"""Ranges are cut at two-hex-character prefixes, the key index's buckets: at most 256 per ingest."""


@dataclass
class PartJob:
    """Staged rows to write as one pool part: the rows `keep` leaves of the staged batches
    `paths` (path, rows), numbered from `first` in staged order. `keep` is the mask itself, or the
    scratch path of a saved one (a clustered ingest's jobs share it). `clustered`: only the rows
    whose pair_id is in [lo, hi) (None: unbounded), sorted by pair_id."""

    paths: list[tuple[str, int]]
    keep: np.ndarray | str
    first: int
    schema: pa.Schema
    clustered: bool = False
    lo: str | None = None
    hi: str | None = None
    group_rows: int = GROUP_ROWS


WriteParts = Callable[[list[PartJob]], list[Receipt]]
"""Runs part jobs (anywhere that sees the workspace); their receipts in the jobs' order."""


def range_bounds(ranges: int) -> list[tuple[str | None, str | None]]:
    """`ranges` contiguous pair_id ranges, cut at two-hex-character prefixes, covering every id."""
    cuts: list[str | None] = [f"{round(RANGES * i / ranges):02x}" for i in range(1, ranges)]
    edges = [None, *cuts, None]
    return list(itertools.pairwise(edges))


def save_mask(ws: Workspace, path: str, keep: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, keep, allow_pickle=False)
    ws.write_bytes(path, buf.getvalue())
    return path


def _mask(ws: Workspace, keep: np.ndarray | str) -> np.ndarray:
    if isinstance(keep, str):
        return np.load(io.BytesIO(ws.read_bytes(keep)), allow_pickle=False)
    return keep


def _read_staged(ws: Workspace, path: str) -> pa.Table:
    target = ws.path(path)
    if ws.is_local:  # mapped: a clustered job copies only its own range's rows
        return pa.ipc.open_file(pa.memory_map(target, "r")).read_all()
    with ws.fs.open(target, "rb") as fh:
        return pa.ipc.open_file(fh).read_all()


def in_range(ids: pa.ChunkedArray | pa.Array, lo: str | None, hi: str | None) -> np.ndarray:
    """Which of `ids` are in [lo, hi)."""
    inside = np.ones(len(ids), dtype=bool)
    if lo is not None:
        inside &= pc.greater_equal(ids, lo).to_numpy(zero_copy_only=False)
    if hi is not None:
        inside &= pc.less(ids, hi).to_numpy(zero_copy_only=False)
    return inside


def write_staged_part(ws: Workspace, job: PartJob) -> Receipt:
    """The job's rows as one uncommitted pool part; its receipt (`rows` 0 and no file when the
    job's range holds none)."""
    keep = _mask(ws, job.keep)
    pieces, offset, seq = [], 0, job.first
    for path, count in job.paths:
        mask = keep[offset : offset + count]
        offset += count
        kept = int(mask.sum())
        if not kept:
            continue
        rows = _read_staged(ws, path)
        seqs = seq + np.cumsum(mask, dtype=np.int64) - 1
        seq += kept
        take = mask & in_range(rows.column("pair_id"), job.lo, job.hi) if job.clustered else mask
        if take.any():
            rows = rows if take.all() else rows.filter(pa.array(take))
            pieces.append(with_seqs(rows, seqs[take]))
    if not pieces:
        return {"file": "", "rows": 0}
    rows = pa.concat_tables(pieces)
    pieces.clear()
    if not job.clustered:
        return write_part(ws, POOL, rows, job.schema)
    return clustered_part(ws, job.schema, sorted_rows(rows), job.group_rows)


def with_seqs(rows: pa.Table, seqs: np.ndarray) -> pa.Table:
    return rows.set_column(rows.schema.get_field_index("ingest_seq"), "ingest_seq",
                           pa.array(seqs, pa.int64()))


def left_seqs(ws: Workspace, parts: list[Receipt], gone: pa.Array) -> np.ndarray:
    """The sorted ingest_seq numbers of `parts`' rows whose pair_id is not in `gone`: a rewrite
    after a concurrent commit numbers each row left by its rank among these (source order)."""
    left = []
    for part in parts:
        keys = read_part(ws, POOL, part, ["pair_id", "ingest_seq"])
        keys = keys.filter(pc.invert(pc.is_in(keys.column("pair_id"), gone))) if len(gone) else keys
        left.append(keys.column("ingest_seq").to_numpy())
    return np.sort(np.concatenate(left)) if left else np.empty(0, np.int64)


def renumbered(ws: Workspace, schema: pa.Schema, rows: pa.Table, seqs: np.ndarray,
               clustered: bool) -> Receipt:
    """`rows` numbered `seqs` as a new part, clustered (sorted, key range) or not; its receipt
    with its largest ingest_seq under `MAX_SEQ`."""
    if clustered:
        return clustered_part(ws, schema, sorted_rows(with_seqs(rows, seqs)), GROUP_ROWS)
    return write_part(ws, POOL, with_seqs(rows, seqs), schema) | {MAX_SEQ: int(seqs.max())}


def sorted_rows(rows: pa.Table) -> pa.Table:
    return rows.sort_by([("pair_id", "ascending"), ("ingest_seq", "ascending")])


def clustered_part(ws: Workspace, schema: pa.Schema, rows: pa.Table, group_rows: int = GROUP_ROWS) -> Receipt:
    """`rows` (sorted by pair_id) as one part in row groups of `group_rows`, with its key range
    and largest ingest_seq in the receipt."""
    part = write_part(ws, POOL, rows, schema, group_rows=group_rows)
    ids = rows.column("pair_id")
    part[KEY_RANGE] = [ids[0].as_py(), ids[-1].as_py()]
    part[MAX_SEQ] = int(pc.max(rows.column("ingest_seq")).as_py())
    return part
