"""An ingest's sources taken together up to their commits: new pairs told from repeats in one
pass of jobs over ranges of key buckets, then their parts written in one wave of part jobs.

Each source's rows meet the pool's keys and those of the sources before it (in commit order), and
its new pairs are numbered after theirs: the result of handling each source after the ones before
it had committed, with the cluster's workers kept busy across sources instead of one source at a
time. The sources then commit one after another.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.ingest_parts import Job, RangeJob, WriteParts, in_threads
from pipeline.ingest_repeats import (
    RepeatJob,
    RepeatReceipt,
    SplitRepeats,
    bucket_groups,
    duplicate_records,
    read_rows,
    split_in_threads,
)
from pipeline.key_index import POOL_KEYS
from pipeline.partitions import POOL
from pipeline.parts import Receipt
from pipeline.store import Workspace

if TYPE_CHECKING:
    from pipeline.ingest_pool import IngestStats, PoolParts

INDEX = "index"
"""The scratch folder of an ingest's staged key index files (`KeyIndex.stage`)."""
REPEAT_JOB_ROWS = 500_000
"""Staged rows per repeat job: a source of fewer rows is split by one job, a bigger one by up to
`REPEAT_JOBS` jobs over ranges of buckets. Splitting 1M keys took about 3.5 s of one core here
(sampled under load), and a task costs 0.15-0.25 s of Prefect bookkeeping on a Dask worker."""
REPEAT_JOBS = 16


def tell_repeats(ws: Workspace, pools: list[PoolParts], stats: list[IngestStats],
                 split: SplitRepeats | None = None) -> list[pa.Table]:
    """New pairs told from repeats for several sources at once (in commit order), in one pass of
    jobs over ranges of key buckets: each source's rows against the pool and the sources before it,
    as if each were split after those had committed. Each pool learns its rows to keep and its
    staged index files; their duplicate records are returned. The jobs' seconds are shared out
    among the sources by staged rows."""
    for pool in pools:
        pool.spill()
    seen = list(ws.manifest(POOL)["shards"]) if ws.has_table(POOL) else []
    state = POOL_KEYS.sync(ws, seen)
    for pool in pools:
        pool.seen = seen
    buckets = sorted({b for pool in pools for run in pool.runs for b in run.batches})
    rows = sum(pool.staged_rows for pool in pools)
    groups = bucket_groups(buckets, min(REPEAT_JOBS, -(-rows // REPEAT_JOB_ROWS)))
    jobs = [RepeatJob([pool.runs for pool in pools], state, group,
                      [pool.scratch(f"repeats-{i:04d}") for pool in pools],
                      [pool.scratch(INDEX) for pool in pools])
            for i, group in enumerate(groups)]
    started = time.perf_counter()
    receipts = split(jobs) if split is not None else split_in_threads(ws, jobs)
    seconds = time.perf_counter() - started
    records = []
    for i, (pool, counts) in enumerate(zip(pools, stats, strict=True)):
        records.append(take_repeats(pool, [job[i] for job in receipts], counts))
        counts.phases["repeats"] = round(seconds * pool.staged_rows / max(rows, 1), 3)
    return records


def write_parts(ws: Workspace, pools: list[PoolParts], stats: list[IngestStats],
                write: WriteParts | None = None) -> None:
    """The kept rows of every source as pool parts, numbered after every pair pooled now and, per
    source, after the sources before it: one wave of part jobs for all of them, and a second for
    the clustered ones (a source of `ingest_parts.CLUSTER_ROWS` new pairs or more). The jobs'
    seconds are shared out among the sources by kept rows."""
    started = time.perf_counter()
    # read again, not the split's: a writer outside this ingest may have committed since
    current = list(ws.manifest(POOL)["shards"]) if ws.has_table(POOL) else []
    state = POOL_KEYS.sync(ws, current)
    first = max((state.covers[s["file"]] for s in current), default=-1) + 1
    waves = []
    for pool in pools:
        pool.first_seq = first
        first += int(pool.keep.sum())
        waves.append(pool.part_jobs())
    done = _run(ws, [job for jobs in waves for job in jobs], write)
    second: list[list[RangeJob]] = []
    for pool, jobs in zip(pools, waves, strict=True):
        receipts, done = done[:len(jobs)], done[len(jobs):]
        if pool.cuts is None:
            pool.take_parts(receipts, jobs)  # taken now: a failing second wave deletes them too
        second.append(pool.range_jobs(receipts))
    done = _run(ws, [job for jobs in second for job in jobs], write)
    for pool, jobs in zip(pools, second, strict=True):
        receipts, done = done[:len(jobs)], done[len(jobs):]
        if pool.cuts is not None:
            pool.take_parts(receipts)
    seconds, kept = time.perf_counter() - started, sum(pool.rows for pool in pools)
    for pool, counts in zip(pools, stats, strict=True):
        counts.phases["parts"] = round(seconds * pool.rows / max(kept, 1), 3)
        counts.added += pool.rows


def _run(ws: Workspace, jobs: Sequence[Job], write: WriteParts | None) -> list[Receipt]:
    """The jobs' receipts, in job order: on `write` (tasks), or on threads here."""
    if not jobs:
        return []
    return write(jobs) if write is not None else in_threads(ws, jobs)


def take_repeats(pool: PoolParts, receipts: list[RepeatReceipt], stats: IngestStats) -> pa.Table:
    """A source's share of the repeat jobs' receipts (in bucket order, as one pass over the
    buckets would): the staged rows to keep, the staged index files, the duplicate records."""
    pool.keep = np.ones(pool.staged_rows, dtype=bool)
    duplicates: list[pa.Table] = []
    pool.fresh_index = {}
    for receipt in receipts:
        repeated = read_rows(pool.ws, receipt.repeats)
        if repeated is not None:
            pool.keep[repeated.column("row").to_numpy()] = False
        found = read_rows(pool.ws, receipt.duplicates)
        if found is not None:
            duplicates.append(found)
        stats.already_present += receipt.already_present
        for bucket, files in receipt.fresh.items():
            pool.fresh_index.setdefault(bucket, []).extend(files)
    frame = pl.from_arrow(pa.concat_tables(duplicates)) if duplicates else _EMPTY_KEYS
    assert isinstance(frame, pl.DataFrame)
    records = duplicate_records(frame)
    stats.duplicates += records.num_rows
    return records


_EMPTY_KEYS = pl.DataFrame(schema={"pair_id": pl.Utf8, "origin": pl.Utf8})
