"""How an ingest tells a repeat: a row's origin, one key bucket split into new and repeated rows,
the `dropped` rows that record a repeat from another origin, and the jobs that split a range of
buckets anywhere that sees the workspace.

A pair is keyed by its content (pair_id) and remembered by where it came from (origin: source and
source_id). A repeat from the same origin is a re-ingest and adds nothing; one from another origin
is an exact duplicate, recorded in `dropped` under its origin's hash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.key_index import POOL_KEYS, IndexState
from pipeline.sources.records import row_id
from pipeline.store import Workspace
from schemas.pair import DROPPED_SCHEMA

RUN_SCHEMA = pa.schema([("pair_id", pa.large_string()), ("origin", pa.large_string()), ("row", pa.int64())])
"""A key run's rows: a staged pair's key, origin and row number in its source."""
_ROWS_SCHEMA = pa.schema([("row", pa.int64())])
_KEYS_SCHEMA = pa.schema([("pair_id", pa.large_string()), ("origin", pa.large_string())])
MAX_OPEN_RUNS = 256
"""Key runs a repeat job keeps open for all its buckets; with more (many sources split together),
each bucket opens its runs again, so the files open at once stay under the process's limit."""
SCRATCH_IPC = pa.ipc.IpcWriteOptions(compression=None)
"""Scratch is written uncompressed: lz4 cost about as much CPU as the zstd of the final parts."""


@dataclass
class KeyRun:
    """A spilled file of keys, one record batch per bucket; its `row`s count from `offset` in the
    source (a file staged apart counts from its own start)."""

    path: str
    batches: dict[str, int]
    offset: int = 0


@dataclass
class RepeatJob:
    """Buckets of one ingest's keys to split into new pairs and repeats, for each of its sources
    (in commit order): the key runs that hold them, the scratch prefix of the outputs and the
    scratch folder where the new keys' index files go (`KeyIndex.stage`); and the pool's key index
    as the ingest found it."""

    runs: list[list[KeyRun]]
    state: IndexState
    buckets: list[str]
    out: list[str]
    index: list[str]


@dataclass
class RepeatReceipt:
    """What a `RepeatJob` wrote: the new pairs' key index files (per bucket, under the job's
    `index` folder), the source rows that repeat a pooled or earlier pair, and those from another
    origin."""

    fresh: dict[str, list[dict[str, Any]]]
    repeats: str | None
    duplicates: str | None
    already_present: int
    pid: int = field(default_factory=os.getpid)


SplitRepeats = Callable[[list[RepeatJob]], list[list[RepeatReceipt]]]
"""Runs repeat jobs (anywhere that sees the workspace); their receipts (one per source) in the
jobs' order."""


def split_buckets(ws: Workspace, job: RepeatJob) -> list[RepeatReceipt]:
    """Split each of the job's buckets (`split_bucket`) against the pool's key index, every source's
    rows against the pool and the sources before it; per source, the new keys become the bucket's
    index file (staged: that source's commit moves it into the index), the repeated rows and
    duplicates go to scratch files named by its `out`. Memory: one bucket of every source."""
    sources = range(len(job.runs))
    fresh: list[dict[str, list[dict[str, Any]]]] = [{} for _ in sources]
    repeated: list[list[pl.DataFrame]] = [[] for _ in sources]
    duplicates: list[list[pl.DataFrame]] = [[] for _ in sources]
    present = [0 for _ in sources]
    runs = [(source, run) for source in sources for run in job.runs[source]]
    with ExitStack() as files:
        held = len(runs) <= MAX_OPEN_RUNS  # else each bucket opens its runs again (open files bounded)
        kept = [(s, run, _open_run(files, ws, run)) for s, run in runs] if held else []
        for bucket in job.buckets:
            with ExitStack() as per_bucket:
                readers = kept if held else [(s, run, _open_run(per_bucket, ws, run)) for s, run in runs
                                             if bucket in run.batches]
                own = pl.concat([run_keys(reader.get_batch(run.batches[bucket]), run.offset, source)
                                 for source, run, reader in readers if bucket in run.batches])
            new, repeats = split_bucket(own, POOL_KEYS.read_bucket(ws, job.state, bucket))
            for (source,), rows in repeats.partition_by("source", as_dict=True).items():
                repeated[source].append(rows.select("row"))
                present[source] += int(rows["same"].sum())
                duplicates[source].append(rows.filter(~pl.col("same")).select("pair_id", "origin"))
            for (source,), rows in new.partition_by("source", as_dict=True).items():
                # written bucket by bucket: never the job's keys at once
                keys = rows.select("pair_id", "origin")
                fresh[source][bucket] = [POOL_KEYS.stage(ws, job.index[source], bucket, keys)]
    return [RepeatReceipt(fresh[s], _write_rows(ws, f"{job.out[s]}-repeats.arrow", repeated[s], _ROWS_SCHEMA),
                          _write_rows(ws, f"{job.out[s]}-duplicates.arrow", duplicates[s], _KEYS_SCHEMA),
                          present[s]) for s in sources]


def _open_run(files: ExitStack, ws: Workspace, run: KeyRun) -> pa.ipc.RecordBatchFileReader:
    return pa.ipc.open_file(files.enter_context(open_scratch(ws, run.path)))


def split_in_threads(ws: Workspace, jobs: list[RepeatJob]) -> list[list[RepeatReceipt]]:
    """The repeat jobs' receipts in job order, on threads in this process, a core each (polars and
    the index files' writes run outside the GIL)."""
    if len(jobs) < 2:
        return [split_buckets(ws, job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(len(jobs), pl.thread_pool_size()),
                            thread_name_prefix="pool-repeats") as threads:
        return list(threads.map(lambda job: split_buckets(ws, job), jobs))


def bucket_groups(buckets: list[str], groups: int) -> list[list[str]]:
    """`buckets` (sorted) in at most `groups` consecutive, nearly equal runs."""
    groups = max(1, min(groups, len(buckets)))
    size, extra = divmod(len(buckets), groups)
    out, start = [], 0
    for i in range(groups):
        end = start + size + (1 if i < extra else 0)
        out.append(buckets[start:end])
        start = end
    return [g for g in out if g]


def read_rows(ws: Workspace, path: str | None) -> pa.Table | None:
    """A job's scratch output (`RepeatReceipt.repeats` or `.duplicates`); None when it wrote none."""
    if path is None:
        return None
    with open_scratch(ws, path) as fh:
        return pa.ipc.open_file(fh).read_all()


def open_scratch(ws: Workspace, path: str) -> Any:
    """A scratch file to read; on local disks through Arrow's own file (its buffers come from
    Arrow's memory pool, which reuses them, instead of Python's)."""
    target = ws.path(path)
    return pa.OSFile(target, "rb") if ws.is_local else ws.fs.open(target, "rb")


def scratch_writer(files: ExitStack, ws: Workspace, path: str,
                   schema: pa.Schema) -> pa.ipc.RecordBatchFileWriter:
    """An Arrow IPC file writer in scratch, closed with `files`."""
    target = ws.path(path)
    ws.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    opened = pa.OSFile(target, "wb") if ws.is_local else ws.fs.open(target, "wb")
    fh = files.enter_context(opened)
    return files.enter_context(pa.ipc.new_file(fh, schema, options=SCRATCH_IPC))


def run_keys(batch: pa.RecordBatch, offset: int, source: int = 0) -> pl.DataFrame:
    """A key run's batch with its rows counted in its source and the source's position."""
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.col("row") + offset, source=pl.lit(source, pl.Int32))


def key_table(frame: pl.DataFrame) -> pa.Table:
    return frame.select(RUN_SCHEMA.names).to_arrow().cast(RUN_SCHEMA)


def write_scratch(ws: Workspace, path: str, tables: list[pa.Table], schema: pa.Schema) -> None:
    """An Arrow IPC scratch file, one record batch per table (read back one at a time)."""
    with ExitStack() as files:
        writer = scratch_writer(files, ws, path, schema)
        for table in tables:
            for batch in table.combine_chunks().to_batches():
                writer.write_batch(batch)


def write_chunks(ws: Workspace, path: str, table: pa.Table) -> None:
    """An Arrow IPC scratch file of one table read back whole (`read_all`): its chunks are
    written as they are, without first copying them into one batch as `write_scratch` does."""
    with ExitStack() as files:
        scratch_writer(files, ws, path, table.schema).write_table(table)


def _write_rows(ws: Workspace, path: str, frames: list[pl.DataFrame], schema: pa.Schema) -> str | None:
    rows = [f for f in frames if f.height]
    if not rows:
        return None
    write_scratch(ws, path, [pl.concat(rows).to_arrow().cast(schema)], schema)
    return path


def split_bucket(own: pl.DataFrame, committed: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(new rows, repeats with `same`: same origin as the pooled or first-seen pair) of one bucket
    of the rows of several sources (`source`: their commit order): a row is new when its pair is
    neither pooled nor seen earlier in its source or a source before it, as if each source were
    split after the ones before it had committed."""
    own = own.sort("source", "row")
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
