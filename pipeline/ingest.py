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
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pyarrow as pa

from pipeline.ingest_pool import IngestStats, PoolParts, duplicate_row_id
from pipeline.pool import append_dropped
from pipeline.sources import SourceSpec, iter_pair_batches
from pipeline.store import Workspace
from schemas.config.sources import SourceConfig
from schemas.pair import QUARANTINE_SCHEMA

__all__ = ["IngestStats", "PoolParts", "duplicate_row_id", "ingest_source", "prefetched", "source_spec"]
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
                      dict(cfg.column_map) or None, cfg.split, cfg.limit, cfg.images)


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
    pairs get the next `ingest_seq` numbers.
    """
    spec = source_spec(source_cfg)
    stats = IngestStats(source=spec.source_name(), path=spec.path)
    start, cpu = time.perf_counter(), time.process_time()
    # image files written before a failure stay: they are content-addressed, and unreferenced
    pool = PoolParts.open(ws)
    try:
        side = _ingest(ws, spec, stats, pool, progress)
        pool.commit(stats)
    except BaseException:
        pool.discard()
        pool.cleanup()
        raise
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
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu
    return stats


def _ingest(ws: Workspace, spec: SourceSpec, stats: IngestStats, pool: PoolParts,
            progress: Callable[[int], None] | None) -> dict[str, list[pa.Table]]:
    """Read the source and write its new pairs as (uncommitted) pool parts; the quarantine and
    dropped rows."""
    side: dict[str, list[pa.Table]] = {DROPPED: [], QUARANTINE: []}
    formats: list[str] = []
    for batch in prefetched(iter_pair_batches(spec), PREFETCH_BATCHES):
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
    side[DROPPED].append(pool.finish(stats))
    stats.format = ",".join(formats)
    return side


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
