"""New pairs told from repeats, for one source or several at once: the repeat jobs planned over
ranges of key buckets, and each source's share of their receipts.

Splitting the sources of one ingest together (in commit order) makes one pass of jobs over the key
buckets instead of one per source: each source's rows meet the pool's keys and those of the
sources before it, with the result of splitting each source after the ones before it had
committed. The sources then write and commit their parts one after another, as before.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

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
from pipeline.store import Workspace

if TYPE_CHECKING:
    from pipeline.ingest_pool import IngestStats, PoolParts

POOL = "pool"
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
