"""An ingest's pool parts: staged rows, less their repeats, numbered in source order and written.

The jobs are planned by pipeline/ingest_pool.py once the repeats are known; each one reads only
the scratch batches it names, so they can run anywhere that sees the workspace (tasks on the
ingest flow's workers) and give the same bytes.

A small ingest writes one part per staged batch, in source order. A big one is clustered, in two
waves of jobs (a shuffle, as datatrove and NeMo Curator shuffle by hash): a job per staged batch
sorts its rows by pair_id and cuts them at the ranges' bounds into one scratch file, a record
batch per range; then a job per range of pair_ids reads its record batch of each such file and
writes one part sorted by pair_id, in small row groups, with the range it holds (`key_range`) in
its manifest entry. Every job holds one batch or one range, and the scratch is read once. Pair
ids are hashes, so an ingest's parts hold disjoint slices of the id space and a lookup of a few
ids (a scoring or judging shard cut from a sorted id list) opens only the parts whose range holds
one of them, and in those only the row groups whose statistics do
(pipeline/pool.py). Rows are numbered (`ingest_seq`) in source order either way.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.ingest_repeats import write_scratch
from pipeline.parts import Receipt, conform, read_part, write_part
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
WRITERS = 2
"""Part jobs run at once in this process (`in_threads`; zstd in pyarrow releases the GIL): on 2
cores a 1M-pair ingest's part writes took 4.2-5.0 s against 7.8-8.8 s one at a time, with the same
peak RSS (about 0.83 GB: a part is one staged batch). At most polars' thread count (one in a
worker synpref starts)."""


@dataclass
class PartJob:
    """A staged batch to write as one pool part: the rows `keep` leaves, numbered from `first`.
    With `cuts` (a clustered ingest's first wave) the rows are sorted by pair_id and cut at those
    ids into one scratch file under `out`, a record batch per range that holds rows, for the
    ranges' jobs to take."""

    path: str
    keep: np.ndarray
    first: int
    schema: pa.Schema
    cuts: list[str] | None = None
    out: str = ""


@dataclass
class RangeJob:
    """A clustered ingest's second wave: the pieces of one pair_id range, record batch `index` of
    each scratch file, merged into one part sorted by pair_id in row groups of `group_rows`."""

    pieces: list[tuple[str, int]]
    schema: pa.Schema
    group_rows: int = GROUP_ROWS


@dataclass
class LooseJob:
    """A committed pool part (`file`, a small ingest's) sorted by pair_id and cut at `cuts` into
    scratch file `out`: the first wave of a compaction (pipeline/pool_compact.py)."""

    file: str
    cuts: list[str]
    out: str


Job = PartJob | RangeJob | LooseJob
WriteParts = Callable[[Sequence[Job]], list[Receipt]]
"""Runs part jobs of one kind (anywhere that sees the workspace); their receipts in the jobs' order."""


def range_cuts(ranges: int) -> list[str]:
    """The ids that cut the id space into `ranges` contiguous ranges at two-hex-character
    prefixes (range i holds the ids from cut i-1 up to, not including, cut i)."""
    return [f"{round(RANGES * i / ranges):02x}" for i in range(1, ranges)]


def _open_ipc(ws: Workspace, path: str, stack: contextlib.ExitStack) -> pa.ipc.RecordBatchFileReader:
    target = ws.path(path)
    if ws.is_local:  # mapped: a range's job reads only its own record batches
        return pa.ipc.open_file(stack.enter_context(pa.memory_map(target, "r")))
    return pa.ipc.open_file(stack.enter_context(ws.fs.open(target, "rb")))


def in_threads(ws: Workspace, jobs: Sequence[Job]) -> list[Receipt]:
    """The jobs' receipts in job order, run on `WRITERS` threads in this process."""
    with ThreadPoolExecutor(max_workers=min(WRITERS, pl.thread_pool_size()),
                            thread_name_prefix="pool-parts") as pool:
        return list(pool.map(lambda job: write_staged_part(ws, job), jobs))


def write_staged_part(ws: Workspace, job: Job) -> Receipt:
    """Run one job: a pool part's receipt, or for a first-wave job the scratch file of its pieces
    (`pieces`, with `ranges`: range -> record batch) and no part (`rows` 0, no file)."""
    if isinstance(job, RangeJob):
        return merged_part(ws, job)
    if isinstance(job, LooseJob):
        rows = pq.read_table(ws.path(POOL, job.file), filesystem=ws.fs)
        return split_rows(ws, sorted_rows(rows), job.cuts, job.out)
    with contextlib.ExitStack() as stack:
        rows = _open_ipc(ws, job.path, stack).read_all()
        if not job.keep.all():
            rows = rows.filter(pa.array(job.keep))
        rows = with_seqs(rows, np.arange(job.first, job.first + rows.num_rows, dtype=np.int64))
        if job.cuts is None:
            return write_part(ws, POOL, rows, job.schema)
        return split_rows(ws, sorted_rows(conform(rows, job.schema)), job.cuts, job.out)


def split_rows(ws: Workspace, rows: pa.Table, cuts: list[str], out: str) -> Receipt:
    """Rows sorted by pair_id cut at `cuts` into their ranges' slices, one record batch each, in
    one scratch file `out`; its receipt names the file and the record batch of each range."""
    ids = rows.column("pair_id").to_numpy(zero_copy_only=False)
    edges = [0, *np.searchsorted(ids, np.array(cuts, dtype=object), side="left").tolist(), len(ids)]
    slices = [(r, lo, hi) for r, (lo, hi) in enumerate(itertools.pairwise(edges)) if hi > lo]
    write_scratch(ws, out, [rows.slice(lo, hi - lo) for _, lo, hi in slices], rows.schema)
    ranges = {str(r): i for i, (r, _, _) in enumerate(slices)}
    return {"file": "", "rows": 0, "pieces": out, "ranges": ranges}


def range_jobs(receipts: list[Receipt], schema: pa.Schema, group_rows: int) -> list[RangeJob]:
    """The second wave: a job per range that some first-wave receipt holds rows of, in id order."""
    pieces: dict[int, list[tuple[str, int]]] = {}
    for receipt in receipts:
        for r, index in receipt["ranges"].items():
            pieces.setdefault(int(r), []).append((str(receipt["pieces"]), int(index)))
    return [RangeJob(pieces[r], schema, group_rows) for r in sorted(pieces)]


def merged_part(ws: Workspace, job: RangeJob) -> Receipt:
    """One range's pieces (each sorted) as one clustered part."""
    with contextlib.ExitStack() as stack:
        pieces = [_open_ipc(ws, path, stack).get_batch(index) for path, index in job.pieces]
        rows = pa.Table.from_batches(pieces)
        del pieces
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
