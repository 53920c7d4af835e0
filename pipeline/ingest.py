"""Ingest: one source into the workspace's `pool`, `quarantine` and `dropped` tables.

The pool is keyed by pair_id, so re-ingesting a source adds nothing. A pair already in the pool
from another row (another source, or the same file twice) is not added again: the repeat is
recorded in `dropped` as an exact duplicate, with the id of the pair it duplicates in
`kept_pair_id` and its own origin in `detail`. Its row in `dropped` is keyed by the repeat's
origin, so `active_pool` still holds the kept pair. New pairs get `ingest_seq` numbers that
continue from the pool's largest, so "first seen" is well defined across sources.

A source that fails part-way (a truncated gzip, an unreadable file in a folder) leaves the
tables as they were: the manifests are restored and the new shards removed.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TypeVar

import polars as pl
import pyarrow as pa

from pipeline.sources import LoadedPairs, SourceSpec, iter_pair_batches
from pipeline.sources.records import row_id
from pipeline.store import MANIFEST, Workspace
from schemas.config.sources import SourceConfig
from schemas.pair import DROPPED_SCHEMA, LEGACY_IMAGE_REF_TYPE, POOL_SCHEMA, QUARANTINE_SCHEMA

POOL, QUARANTINE, DROPPED, IMAGES = "pool", "quarantine", "dropped", "images"
QUARANTINE_KEY = ["source_file", "row"]
_ingest_lock = threading.Lock()
T = TypeVar("T")
PREFETCH_BATCHES = 2
"""Batches read ahead while the current one is written: parsing (polars) and writing (zstd
Parquet in pyarrow) both release the GIL, so two cores overlap them."""


@dataclass
class IngestStats:
    source: str
    path: str
    format: str = ""
    rows_read: int = 0
    added: int = 0
    already_present: int = 0
    duplicates: int = 0
    quarantined: int = 0
    dropped: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def pairs_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "pairs_per_s": round(self.pairs_per_s, 1)}


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

    `progress` is called with the number of rows read after every batch.
    """
    spec = source_spec(source_cfg)
    stats = IngestStats(source=spec.source_name(), path=spec.path)
    start, cpu = time.perf_counter(), time.process_time()
    with _ingest_lock:
        # image files written before a failure stay: they are content-addressed, and unreferenced
        snapshot = {t: ws.read_json(f"{t}/{MANIFEST}") for t in (POOL, QUARANTINE, DROPPED, IMAGES)}
        try:
            _ingest(ws, spec, stats, progress)
        except BaseException:
            _restore(ws, snapshot)
            raise
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu
    return stats


def _ingest(ws: Workspace, spec: SourceSpec, stats: IngestStats,
            progress: Callable[[int], None] | None) -> None:
    known = _known_pairs(ws)
    next_seq = int(known["ingest_seq"].max() or -1) + 1 if known.height else 0
    known = known.drop("ingest_seq")
    pool_schema = _pool_schema(ws)
    formats: list[str] = []
    for batch in prefetched(iter_pair_batches(spec), PREFETCH_BATCHES):
        if batch.format not in formats:
            formats.append(batch.format)
        stats.rows_read += batch.rows_read
        new, duplicates, present = _split_batch(batch, known)
        if new.num_rows:
            seqs = pa.array(range(next_seq, next_seq + new.num_rows), pa.int64())
            new = new.set_column(new.schema.get_field_index("ingest_seq"), "ingest_seq", seqs)
            next_seq += new.num_rows
            if batch.images:  # bytes first: a pooled pair never names an image not yet stored
                from pipeline.images import store_images  # Pillow loads only for image sources

                store_images(ws, batch.images.values(), source=stats.source)
            ws.append(POOL, new, schema=pool_schema)
            known = pl.concat([known, _origins(new)], how="vertical")
        stats.added += new.num_rows
        stats.already_present += present
        stats.duplicates += duplicates.num_rows
        if duplicates.num_rows:
            ws.append(DROPPED, duplicates, unique_key="pair_id", schema=DROPPED_SCHEMA)
        stats.quarantined += batch.quarantine.num_rows
        ws.append(QUARANTINE, batch.quarantine, unique_key=QUARANTINE_KEY, schema=QUARANTINE_SCHEMA)
        stats.dropped += batch.dropped.num_rows
        ws.append(DROPPED, batch.dropped, unique_key="pair_id", schema=DROPPED_SCHEMA)
        if progress is not None:
            progress(stats.rows_read)
    stats.format = ",".join(formats)
    for table, schema in ((POOL, POOL_SCHEMA), (QUARANTINE, QUARANTINE_SCHEMA), (DROPPED, DROPPED_SCHEMA)):
        if not ws.has_table(table):
            ws.append(table, schema.empty_table())


def _pool_schema(ws: Workspace) -> pa.Schema:
    """POOL_SCHEMA, or the older schema a pool was written with (its image refs lack width/height/
    format): one pool's shards keep one schema, so scans over all of them keep working."""
    stored = ws.manifest(POOL).get("schema") if ws.has_table(POOL) else None
    if not stored:
        return POOL_SCHEMA
    from pipeline.store import _schema_from_json

    schema = _schema_from_json(stored)
    legacy = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()),
                                 ("images", pa.list_(LEGACY_IMAGE_REF_TYPE))]))
    if schema.names == POOL_SCHEMA.names and schema.field("conversation").type == legacy:
        return schema
    return POOL_SCHEMA


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


def duplicate_row_id(source: str, source_id: str) -> str:
    """The `dropped` key of a row that repeats a pooled pair: its origin, hashed."""
    return row_id(source, source_id)


def _known_pairs(ws: Workspace) -> pl.DataFrame:
    if not ws.has_table(POOL) or not ws.row_count(POOL):
        return pl.DataFrame(schema={"pair_id": pl.Utf8, "origin": pl.Utf8, "ingest_seq": pl.Int64})
    table = ws.read(POOL, columns=["pair_id", "source", "source_id", "ingest_seq"])
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.select("pair_id", _origin_expr(), "ingest_seq")


def _origin_expr() -> pl.Expr:
    return pl.concat_str([pl.col("source"), pl.col("source_id")], separator="\x1f").alias("origin")


def _origins(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table.select(["pair_id", "source", "source_id"]))
    assert isinstance(frame, pl.DataFrame)
    return frame.select("pair_id", _origin_expr())


def _split_batch(batch: LoadedPairs, known: pl.DataFrame) -> tuple[pa.Table, pa.Table, int]:
    """(new pool rows, duplicate records for `dropped`, rows already ingested from the same origin)."""
    pairs = batch.pairs
    if not pairs.num_rows:
        return pairs, DROPPED_SCHEMA.empty_table(), 0
    rows = _origins(pairs).with_row_index("row")
    rows = rows.with_columns(first_in_batch=pl.col("pair_id").is_first_distinct())
    known = known.rename({"origin": "known_origin"})
    rows = rows.join(known, on="pair_id", how="left", maintain_order="left")
    rows = rows.with_columns(
        new=pl.col("known_origin").is_null() & pl.col("first_in_batch"),
        same=pl.col("known_origin") == pl.col("origin"),
    )
    new_mask = rows["new"].to_numpy()
    present = int(rows["same"].fill_null(False).sum())
    dups = rows.filter(~pl.col("new") & ~pl.col("same").fill_null(False))
    records = []
    for pair_id, origin in dups.select("pair_id", "origin").iter_rows():
        source, source_id = origin.split("\x1f", 1)
        detail = {"source": source, "source_id": source_id}
        records.append({
            "pair_id": duplicate_row_id(source, source_id), "stage": "ingest", "reason": "exact-duplicate",
            "kept_pair_id": pair_id, "similarity": 1.0,
            "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True),
        })
    duplicates = pa.Table.from_pydict(
        {name: [r[name] for r in records] for name in DROPPED_SCHEMA.names}, schema=DROPPED_SCHEMA)
    if new_mask.all():
        return pairs, duplicates, present
    # filter works chunk by chunk; take would first concatenate every chunk of the batch
    return pairs.filter(pa.array(new_mask)), duplicates, present


def _restore(ws: Workspace, snapshot: dict[str, dict | None]) -> None:
    """Put the manifests back as they were and delete the shards written since."""
    for table, manifest in snapshot.items():
        keep = {s["file"] for s in (manifest or {}).get("shards", [])}
        current = ws.read_json(f"{table}/{MANIFEST}") or {"shards": []}
        if manifest is None:
            ws.remove(table)
            continue
        ws.write_json(f"{table}/{MANIFEST}", manifest)
        for shard in current["shards"]:
            if shard["file"] not in keep:
                ws.remove(f"{table}/{shard['file']}")
