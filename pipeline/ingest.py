"""Ingest: one source into the workspace's `pool`, `quarantine` and `dropped` tables.

The pool is keyed by pair_id, so re-ingesting a source adds nothing. A pair already in the pool
from another row (another source, or the same file twice) is not added again: the repeat is
recorded in `dropped` as an exact duplicate, with the id of the pair it duplicates in
`kept_pair_id` and its own origin in `detail`. Its row in `dropped` is keyed by the repeat's
origin, so `active_pool` still holds the kept pair. New pairs get `ingest_seq` numbers that
continue from the pool's largest, so "first seen" is well defined across sources.

New pairs are staged, told from repeats one key bucket at a time against the pool's key index
(pipeline/ingest_pool.py: no process holds the pool's ids), written as parts and committed once
through the store's commit, so a source that fails part-way (a truncated gzip, an unreadable
file in a folder) commits nothing (its parts are deleted), and concurrent ingests neither lose,
repeat nor renumber each other's pairs.

The reading can be split from the commit: `stage_file` stages one file of a source anywhere (a
task on a worker) and returns a receipt; `commit_sources` takes the sources' receipts in file
order and commits them as `ingest_source` would have, one source after another, to the same bytes
(flows/ingest.py); their repeats are told in one pass and their parts written in one wave.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow as pa

from pipeline.ingest_parts import WriteParts
from pipeline.ingest_pool import SCRATCH, IngestStats, PoolParts
from pipeline.ingest_repeats import SplitRepeats, duplicate_row_id
from pipeline.ingest_together import tell_repeats, write_parts
from pipeline.pool import append_dropped
from pipeline.sources import SourceSpec, iter_pair_batches, ranges
from pipeline.sources.loader import source_files
from pipeline.sources.ranges import Unit
from pipeline.store import Workspace
from schemas.config.sources import SourceConfig
from schemas.pair import QUARANTINE_SCHEMA

__all__ = ["IngestStats", "PoolParts", "Unit", "commit_source", "commit_sources", "count_unit_lines",
           "duplicate_row_id",
           "file_token", "ingest_source", "plan_units", "prefetched", "remove_scratch", "source_spec",
           "stage_file"]
POOL, QUARANTINE, DROPPED, IMAGES = "pool", "quarantine", "dropped", "images"
QUARANTINE_KEY = ["source_file", "row"]
T = TypeVar("T")
PREFETCH_BATCHES = 2
"""Batches read ahead while the current one is staged: parsing (polars) and writing (Arrow IPC
in pyarrow) both release the GIL, so two cores overlap them."""


def source_spec(cfg: SourceConfig | SourceSpec) -> SourceSpec:
    if isinstance(cfg, SourceSpec):
        return cfg
    return SourceSpec(cfg.path, cfg.format, cfg.name, cfg.license, cfg.label_source,
                      dict(cfg.column_map) or None, cfg.split, cfg.limit, cfg.images, cfg.split_bytes)


def plan_units(source_cfg: SourceConfig | SourceSpec) -> list[Unit]:
    """The source's staging units, in reading order: its files, a big file in byte or row-group
    ranges (pipeline.sources.ranges), or the whole source (`Unit(None)`) when it has a `limit`,
    which counts rows across its files. Byte ranges after a file's first are not numbered yet:
    `count_unit_lines` counts the ranges before them and `ranges.numbered` numbers them."""
    spec = source_spec(source_cfg)
    if spec.limit is not None:
        return [Unit(None)]
    return ranges.plan_units(source_files(spec), spec.split_bytes)


def count_unit_lines(source_cfg: SourceConfig | SourceSpec, unit: Unit) -> int:
    """The newlines of one byte range of the source (a task: the ranges after it start there)."""
    spec = source_spec(source_cfg)
    return ranges.count_lines(source_files(spec)[unit.file_index][0], unit)  # type: ignore[index]


def ingest_source(
    ws: Workspace,
    source_cfg: SourceConfig | SourceSpec,
    *,
    progress: Callable[[int], None] | None = None,
) -> IngestStats:
    """Read one source and append its new pairs, quarantined rows and dropped rows to the workspace.

    `progress` is called with the number of rows read after every batch. Many ingests may run at
    once (threads or processes): the pool is written as parts and committed once, under the
    pool's commit lock, where pairs other ingests committed meanwhile are left out and the new
    pairs get the next `ingest_seq` numbers. The ingest flow stages the files apart (`stage_file`,
    tasks on its runner) and commits them as this does (`commit_source`), to the same bytes.
    """
    spec = source_spec(source_cfg)
    stats = IngestStats(source=spec.source_name(), path=spec.path)
    start, cpu = time.perf_counter(), time.process_time()
    # image files written before a failure stay: they are content-addressed, and unreferenced
    pool = PoolParts.open(ws)
    try:
        side = _ingest(ws, spec, stats, pool, progress)
        pool.commit(stats)
    except BaseException as exc:
        pool.abandon(exc)
        raise
    _land(ws, pool, side)
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu
    return stats


def _land(ws: Workspace, pool: PoolParts, side: dict[str, list[pa.Table]]) -> None:
    """After the pool's commit: its keys into the index, the scratch removed, the dropped and
    quarantined rows appended."""
    try:
        pool.index()
    finally:
        pool.cleanup()
    side[DROPPED].extend(pool.late_duplicates)
    append_dropped(ws, pa.concat_tables(side[DROPPED]))
    rows = [t for t in side[QUARANTINE] if t.num_rows]
    if rows or not ws.has_table(QUARANTINE):
        ws.append(QUARANTINE, pa.concat_tables(rows) if rows else QUARANTINE_SCHEMA.empty_table(),
                  unique_key=QUARANTINE_KEY, schema=QUARANTINE_SCHEMA)


def _ingest(ws: Workspace, spec: SourceSpec, stats: IngestStats, pool: PoolParts,
            progress: Callable[[int], None] | None) -> dict[str, list[pa.Table]]:
    """Read the source and write its new pairs as (uncommitted) pool parts; the quarantine and
    dropped rows."""
    side = _stage(ws, spec, None, stats, pool, progress)
    side[DROPPED].append(pool.finish(stats))
    return side


def _stage(ws: Workspace, spec: SourceSpec, unit: Unit | None, stats: IngestStats, pool: PoolParts,
           progress: Callable[[int], None] | None) -> dict[str, list[pa.Table]]:
    """Stage the source's pairs (or one unit's) in `pool`; its quarantine and dropped rows. `stats`
    counts the rows read, quarantined and dropped, and names the formats."""
    side: dict[str, list[pa.Table]] = {DROPPED: [], QUARANTINE: []}
    formats: list[str] = []
    batches = iter_pair_batches(spec, unit=unit)
    for batch in prefetched(batches, PREFETCH_BATCHES):
        if batch.format not in formats:
            formats.append(batch.format)
        stats.rows_read += batch.rows_read
        if batch.pairs.num_rows:
            if batch.images:  # bytes first: a pooled pair never names an image not yet stored
                from pipeline.images import store_images  # Pillow loads only for image sources

                store_images(ws, batch.images.values(), source=stats.source)
            pool.stage(batch.pairs)
        side[DROPPED].append(batch.dropped)
        side[QUARANTINE].append(batch.quarantine)
        stats.quarantined += batch.quarantine.num_rows
        stats.dropped += batch.dropped.num_rows
        if progress is not None:
            progress(stats.rows_read)
    stats.format = ",".join(formats)
    return side


def file_token(source_token: str, position: int) -> str:
    """The scratch folder of a source's `position`-th file, inside the source's (removed with it)."""
    return f"{source_token}/f{position:06d}"


def stage_file(
    ws: Workspace,
    source_cfg: SourceConfig | SourceSpec,
    unit: Unit,
    token: str,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Read one unit of a source (`plan_units`: a file, a range of a big file, or the whole
    source), store its images and stage its pairs under `_ingest/<token>/`; its receipt (counts,
    scratch files, PID). Nothing is committed, so units can be staged anywhere, in any order, and a
    failed one leaves only scratch."""
    spec = source_spec(source_cfg)
    stats = IngestStats(source=spec.source_name(), path=spec.path)
    start, cpu = time.perf_counter(), time.process_time()
    pool = PoolParts.open(ws, token)
    try:
        side = _stage(ws, spec, unit, stats, pool, progress)
        receipt = pool.staged_receipt()
        receipt["side_files"] = {name: pool.write_scratch(f"{name}.arrow", tables)
                                 for name, tables in side.items()}
    except BaseException as exc:
        pool.abandon(exc)
        raise
    return {**receipt, "file_index": unit.file_index, "unit": unit.describe(),
            "formats": stats.format.split(",") if stats.format else [],
            "rows_read": stats.rows_read, "quarantined": stats.quarantined, "dropped": stats.dropped,
            "pid": os.getpid(), "seconds": round(time.perf_counter() - start, 3),
            "cpu_seconds": round(time.process_time() - cpu, 3),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def commit_source(ws: Workspace, source_cfg: SourceConfig | SourceSpec, receipts: list[dict[str, Any]],
                  token: str, write: WriteParts | None = None,
                  split: SplitRepeats | None = None) -> IngestStats:
    """The source's staged files (receipts in the source's file order) into the pool: repeats told
    bucket by bucket against the pool's key index, new pairs numbered in file order, one commit;
    then its quarantine and dropped rows. The source's scratch (`_ingest/<token>/`, the files'
    folders inside it) is removed. `split` runs the repeat jobs (each splits a range of key
    buckets) and `write` the part jobs (each reads a staged batch and writes its part): tasks on
    workers; default: here."""
    return commit_sources(ws, [source_cfg], [receipts], [token], write, split)[0]


def commit_sources(ws: Workspace, source_cfgs: list[SourceConfig | SourceSpec],
                   receipts: list[list[dict[str, Any]]], tokens: list[str], write: WriteParts | None = None,
                   split: SplitRepeats | None = None) -> list[IngestStats]:
    """`commit_source` for several sources, in order, to the bytes of committing them one after
    another (or of one process reading them in that order): their repeats are told in one pass of
    jobs over the key buckets and their parts written in one wave of part jobs, each source's
    numbered after the ones before it (pipeline/ingest_together.py); then each source commits and
    indexes its new pairs in order. A failure before the first commit commits nothing; one in a
    source's commit keeps the sources before it and commits none after it."""
    specs = [source_spec(cfg) for cfg in source_cfgs]
    stats = [IngestStats(source=spec.source_name(), path=spec.path) for spec in specs]
    pools = [PoolParts.open(ws, token) for token in tokens]
    sides: list[dict[str, list[pa.Table]]] = [{DROPPED: [], QUARANTINE: []} for _ in specs]
    try:
        for pool, counts, side, staged in zip(pools, stats, sides, receipts, strict=True):
            _adopt(pool, counts, side, staged)
        duplicates = tell_repeats(ws, pools, stats, split)
        write_parts(ws, pools, stats, write)
    except BaseException as exc:
        _abandon(pools, exc)
        raise
    committed: set[str] = set()
    for i, (pool, counts, side) in enumerate(zip(pools, stats, sides, strict=True)):
        side[DROPPED].append(duplicates[i])
        pool.trusted = set(committed)
        try:
            started = time.perf_counter()
            pool.commit(counts)
            started = counts.timed("commit", started)
        except BaseException as exc:
            _abandon(pools[i:], exc)
            raise
        committed |= {part["file"] for part in pool.parts}
        _land(ws, pool, side)
        counts.timed("index", started)
    return stats


def _adopt(pool: PoolParts, stats: IngestStats, side: dict[str, list[pa.Table]],
           receipts: list[dict[str, Any]]) -> None:
    """A source's staged files (receipts in file order) taken over by its PoolParts; the counts."""
    formats: list[str] = []
    for receipt in receipts:
        pool.adopt(receipt)
        formats += [f for f in receipt["formats"] if f not in formats]
        stats.rows_read += int(receipt["rows_read"])
        stats.quarantined += int(receipt["quarantined"])
        stats.dropped += int(receipt["dropped"])
        for name, path in receipt["side_files"].items():
            if path:
                side[name].append(pool.read_scratch(path))
    stats.format = ",".join(formats)


def _abandon(pools: list[PoolParts], exc: BaseException) -> None:
    """Every pool's uncommitted parts and scratch deleted; a full disk raised as the store's error."""
    for pool in pools[1:]:
        pool.discard()
        pool.cleanup()
    pools[0].abandon(exc)


def remove_scratch(ws: Workspace, token: str) -> None:
    """Remove an ingest's scratch folder (`_ingest/<token>/`), whatever its staged files left."""
    ws.remove(f"{SCRATCH}/{token}")


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """`items`, read by one background thread up to `depth` ahead of the consumer.

    An exception while reading is raised in the consumer where it happened; a consumer that
    stops early leaves at most `depth` items read ahead.
    """
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-prefetch") as reader:
        ahead = deque(reader.submit(next, items, end) for _ in range(max(1, depth)))
        while (item := ahead.popleft().result()) is not end:
            ahead.append(reader.submit(next, items, end))
            yield item  # type: ignore[misc]
