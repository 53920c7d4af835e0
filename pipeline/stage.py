"""One contract for pool stages: a map over pool partitions, or a global step with a shuffle.

Following datatrove's filters and distilabel's Step/GlobalStep: a `PoolFilter` implements only
`decide(batch)`, the rows of one batch it drops with their reason; the base reads the partition's
batches (the active pool: pairs already dropped are left out), writes the drops as a part of
`dropped`, times the work and returns a receipt. A `GlobalStep` (exact dedup) maps every
partition to hash buckets of its shuffle key, then reduces each bucket on its own. The driver
(an executor in flows/, or `run_local`) holds only receipts, and `commit` lands every part of the
stage in one commit of `dropped`, keyed by pair_id, with one `StageStats`.

Partitions are planned from the pool's manifest alone: contiguous row ranges of its parts, about
`rows_per_partition` each, so any executor gets the same partitions and results do not depend on
where the tasks ran. A new filter is one module with a `PoolFilter` subclass (registered by its
`name` in `STEPS`) plus its configuration.
"""

from __future__ import annotations

import copy
import os
import resource
import time
import uuid
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa

from pipeline.partitions import POOL as POOL  # the partitions stages map over, importable from here
from pipeline.partitions import ROWS_PER_PARTITION as ROWS_PER_PARTITION
from pipeline.partitions import Partition as Partition
from pipeline.partitions import partition_holding as partition_holding
from pipeline.partitions import plan_partitions as plan_partitions
from pipeline.partitions import read_partition as read_partition
from pipeline.parts import Receipt, commit_keyed_parts, discard, write_part
from pipeline.pool import DroppedLookup
from pipeline.store import Workspace
from schemas.pair import DROPPED_SCHEMA

DROPPED, SHUFFLE, BLOCKED = "dropped", "_shuffle", "blocked"
LOCAL_THREADS = 2
"""Partitions `run_local` works on at once, at most polars' thread count (one in a worker synpref
starts): on 2 cores exact dedup of 1M pairs took about 7.9 s on two threads against 8.8 s on
one (decontamination 6.1 s against 7.2 s); each thread holds one partition."""
STEPS: dict[str, type[PoolFilter] | type[GlobalStep]] = {}
"""Every stage class by its `name`, filled as the modules that define them are imported."""


@dataclass
class StageStats:
    """What one stage did: rows examined and dropped, wall and CPU time, tasks it ran as."""

    stage: str
    examined: int = 0
    dropped: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    tasks: int = 0
    detail: dict[str, int] = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.examined / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "pairs_per_s": round(self.pairs_per_s, 1)}


def dropped_rows(stage: str, decided: pl.DataFrame) -> pa.Table:
    """`dropped` rows from a decide() frame (pair_id, reason, optional kept_pair_id, similarity,
    detail), sorted by pair_id so a part's bytes do not depend on batch order."""
    defaults = {"kept_pair_id": pl.lit(""), "similarity": pl.lit(None, pl.Float64), "detail": pl.lit("{}")}
    frame = decided.with_columns(stage=pl.lit(stage), **{
        k: v for k, v in defaults.items() if k not in decided.columns})
    return frame.select(DROPPED_SCHEMA.names).sort("pair_id").to_arrow().cast(DROPPED_SCHEMA)


class _Timed:
    def __init__(self) -> None:
        self.start, self.cpu = time.perf_counter(), time.process_time()

    def receipt(self, stage: str, task: int, examined: int, parts: list[Receipt], **extra: Any) -> Receipt:
        return {"stage": stage, "task": task, "examined": examined, "parts": parts, "pid": os.getpid(),
                "rows": sum(int(p["rows"]) for p in parts), "seconds": time.perf_counter() - self.start,
                "cpu_seconds": time.process_time() - self.cpu,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}


class _Step:
    name: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ("pair_id",)
    writes: ClassVar[str] = DROPPED

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            STEPS[cls.name] = cls  # type: ignore[assignment]

    def stats_detail(self) -> dict[str, int]:
        """Counters of the step's own (benchmark items, ...) for its StageStats."""
        return {}

    def commit(self, ws: Workspace, receipts: list[Receipt], *, started: float | None = None) -> StageStats:
        """Land every part the tasks wrote as one commit of `dropped`; the stage's stats."""
        receipts = sorted(receipts, key=lambda r: (r.get("phase", ""), r["task"]))
        parts = [p for r in receipts for p in r["parts"]]
        stats = StageStats(self.name, tasks=len(receipts), detail=self.stats_detail())
        stats.examined = sum(int(r["examined"]) for r in receipts)
        stats.cpu_seconds = sum(float(r["cpu_seconds"]) for r in receipts)
        seen = _dropped_seen(ws, receipts) if self.writes == DROPPED else []
        stats.dropped = commit_keyed_parts(ws, self.writes, parts, DROPPED_SCHEMA, "pair_id", seen)
        if started is not None:
            stats.seconds = time.perf_counter() - started
        return stats


class PoolFilter(_Step):
    """A map over partitions: `decide` names the rows of a batch to drop and why."""

    def decide(self, batch: pl.DataFrame) -> pl.DataFrame:
        """(pair_id, reason[, kept_pair_id, similarity, detail]) of the rows of `batch` to drop."""
        raise NotImplementedError

    def run(self, ws: Workspace, partition: Partition, gone: pl.DataFrame | None = None) -> Receipt:
        """Decide over one partition and write its drops as one uncommitted part; the receipt."""
        timer, examined, decided = _Timed(), 0, []
        lookup = DroppedLookup.open(ws) if gone is None else None
        for batch in read_partition(ws, partition, list(self.reads), gone, lookup=lookup):
            examined += batch.height
            drops = self.decide(batch)
            if drops.height:
                decided.append(drops)
        drops = _unblocked(pl.concat(decided, how="diagonal"), lookup) if decided else None
        parts = [write_part(ws, self.writes, dropped_rows(self.name, drops))
                 ] if drops is not None and drops.height else []
        return timer.receipt(self.name, partition.index, examined, parts,
                             **(lookup.receipt() if lookup is not None else {}))


class GlobalStep(_Step):
    """A shuffle then a reduce: `shuffle_key` rows of every partition go to hash buckets
    (`keys` gives each row a UInt64 `bucket_hash`), and `reduce` sees one whole bucket."""

    buckets: int = 0
    """Hash buckets of the shuffle (reduce tasks); 0: one per partition, so a reduce holds about
    a partition's keys. The drops do not depend on it."""

    def sized(self, partitions: int) -> GlobalStep:
        """This step with its bucket count fixed for a run over `partitions` partitions."""
        if self.buckets:
            return self
        step = copy.copy(self)
        step.buckets = max(1, partitions)
        return step

    def keys(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The columns `reduce` needs per row, with `bucket_hash` (UInt64) among them."""
        raise NotImplementedError

    def reduce(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The drops of one bucket, as PoolFilter.decide returns them."""
        raise NotImplementedError

    def shuffle_token(self) -> str:
        return uuid.uuid4().hex[:12]

    def run_map(self, ws: Workspace, partition: Partition, token: str,
                gone: pl.DataFrame | None = None) -> Receipt:
        """Key one partition and write one scratch file per non-empty bucket."""
        timer, examined, frames = _Timed(), 0, []
        lookup = DroppedLookup.open(ws) if gone is None else None
        for batch in read_partition(ws, partition, list(self.reads), gone, lookup=lookup):
            examined += batch.height
            frames.append(self.keys(batch))
        if lookup is not None and lookup.blocked:  # rare: reduces must not drop these ids
            ws.write_bytes(f"{SHUFFLE}/{self.name}/{token}/{BLOCKED}/map-{partition.index:06d}.arrow",
                           _ipc(pl.DataFrame({"pair_id": lookup.blocked}, schema={"pair_id": pl.Utf8})))
        written = []
        if frames:
            bucket_of = (pl.col("bucket_hash") % self.buckets).cast(pl.Int64)
            keyed = pl.concat(frames).with_columns(bucket=bucket_of)
            for (bucket,), rows in keyed.partition_by("bucket", as_dict=True).items():
                path = f"{SHUFFLE}/{self.name}/{token}/bucket-{bucket:05d}/map-{partition.index:06d}.parquet"
                ws.write_bytes(path, _ipc(rows.drop("bucket")))
                written.append(int(bucket))  # type: ignore[call-overload]
        return timer.receipt(self.name, partition.index, examined, [], phase="map", buckets=sorted(written),
                             **(lookup.receipt() if lookup is not None else {}))

    def run_reduce(self, ws: Workspace, bucket: int, token: str) -> Receipt:
        """Reduce one bucket over every map task's scratch file (in map order)."""
        timer = _Timed()
        folder = f"{SHUFFLE}/{self.name}/{token}/bucket-{bucket:05d}"
        frames = [pl.read_ipc(ws.read_bytes(f"{folder}/{name}")) for name in ws.listdir(folder)]
        decided = self.reduce(pl.concat(frames)) if frames else pl.DataFrame()
        blocked = f"{SHUFFLE}/{self.name}/{token}/{BLOCKED}"
        if decided.height and ws.exists(blocked):
            ids = pl.concat([pl.read_ipc(ws.read_bytes(f"{blocked}/{n}")) for n in ws.listdir(blocked)])
            decided = decided.join(ids, on="pair_id", how="anti", maintain_order="left")
        parts = [write_part(ws, self.writes, dropped_rows(self.name, decided))] if decided.height else []
        return timer.receipt(self.name, bucket, 0, parts, phase="reduce")

    def cleanup(self, ws: Workspace, token: str) -> None:
        ws.remove(f"{SHUFFLE}/{self.name}/{token}")


def _unblocked(drops: pl.DataFrame, lookup: DroppedLookup | None) -> pl.DataFrame:
    """`drops` less the ids `dropped` holds as ingest rows (their key is taken)."""
    if lookup is None or not lookup.blocked:
        return drops
    return drops.filter(~pl.col("pair_id").is_in(lookup.blocked))


def _dropped_seen(ws: Workspace, receipts: list[Receipt]) -> list[dict[str, Any]]:
    """The leading `dropped` parts every task checked its ids against (the map and partition
    tasks; reduces decide over what their maps read): the stage's keyed commit re-checks only
    the parts committed after them. [] (check every part) when a task did not say."""
    asked = [r for r in receipts if r.get("phase") != "reduce"]
    if not asked or any("dropped_seen" not in r for r in asked):
        return []
    first = min(asked, key=lambda r: int(r["dropped_seen"]))
    if not int(first["dropped_seen"]):
        return []
    shards = ws.manifest(DROPPED)["shards"] if ws.has_table(DROPPED) else []
    seen = int(first["dropped_seen"])
    if len(shards) < seen or shards[seen - 1]["file"] != first["dropped_last"]:
        return []
    return list(shards[:seen])


def _ipc(frame: pl.DataFrame) -> bytes:
    return frame.write_ipc(None).getvalue()


Progress = Callable[[int, int], None]


def run_local(ws: Workspace, step: PoolFilter | GlobalStep, *, rows_per_partition: int = ROWS_PER_PARTITION,
              progress: Progress | None = None, threads: int | None = None) -> StageStats:
    """Run a stage in this process, `threads` partitions (then buckets) at a time, and commit it once.

    The work of a partition is polars, numba and pyarrow, which release the GIL, so threads use
    the cores without a task runner; receipts are taken in partition order, so the commit (and
    every part) is the same for any number of threads. Default: `LOCAL_THREADS`."""
    started, cpu = time.perf_counter(), time.process_time()
    threads = min(LOCAL_THREADS, pl.thread_pool_size()) if threads is None else max(1, threads)
    partitions = plan_partitions(ws, rows_per_partition)
    total, done = sum(p.rows for p in partitions), 0
    if progress is not None and partitions:
        progress(0, total)
    receipts: list[Receipt] = []
    token = ""
    if isinstance(step, GlobalStep):
        step, token = step.sized(len(partitions)), step.shuffle_token()

    def partition_done(receipt: Receipt, rows: int) -> None:
        nonlocal done
        receipts.append(receipt)
        done += rows
        if progress is not None:
            progress(done, total)

    try:
        if isinstance(step, GlobalStep):
            global_step = step
            _in_threads([(lambda p=p: global_step.run_map(ws, p, token), p.rows) for p in partitions],
                        threads, partition_done)
            buckets = sorted({b for r in receipts for b in r["buckets"]})
            _in_threads([(lambda b=b: global_step.run_reduce(ws, b, token), 0) for b in buckets], threads,
                        lambda receipt, _: receipts.append(receipt))
        else:
            pool_filter = step
            _in_threads([(lambda p=p: pool_filter.run(ws, p), p.rows) for p in partitions], threads,
                        partition_done)
        stats = step.commit(ws, receipts, started=started)
        # this process's CPU over the whole run: summing the tasks' own figures would count the
        # seconds of tasks that ran side by side once per task
        stats.cpu_seconds = time.process_time() - cpu
        return stats
    except BaseException:
        discard(ws, step.writes, [p for r in receipts for p in r["parts"]])
        raise
    finally:
        if isinstance(step, GlobalStep):
            step.cleanup(ws, token)


def _in_threads(jobs: list[tuple[Callable[[], Receipt], int]], threads: int,
                done: Callable[[Receipt, int], None]) -> None:
    """Run `(job, rows)` pairs on `threads` threads and hand each receipt to `done`, in job order.

    On a failure every job still running finishes and its receipt is handed over too (the
    caller discards their parts), then the first error is raised."""
    if threads <= 1 or len(jobs) <= 1:
        for job, rows in jobs:
            done(job(), rows)
        return
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stage") as pool:
        futures = [(pool.submit(job), rows) for job, rows in jobs]
        for future, rows in futures:
            if error is not None:
                future.cancel()
            try:
                receipt = future.result()
            except CancelledError:
                continue
            except BaseException as exc:  # raised below, once the jobs still running have stopped
                error = error or exc
                continue
            done(receipt, rows)
    if error is not None:
        raise error
