"""Ingest: one source into the workspace's `pool`, `quarantine` and `dropped` tables.

The pool is keyed by pair_id, so re-ingesting a source adds nothing. A pair already in the pool
from another row (another source, or the same file twice) is not added again: the repeat is
recorded in `dropped` as an exact duplicate, with the id of the pair it duplicates in
`kept_pair_id` and its own origin in `detail`. Its row in `dropped` is keyed by the repeat's
origin, so `active_pool` still holds the kept pair. New pairs get `ingest_seq` numbers that
continue from the pool's largest, so "first seen" is well defined across sources.

New pairs are written as parts and committed once through the store's commit, so a source that
fails part-way (a truncated gzip, an unreadable file in a folder) commits nothing (its parts
are deleted), and concurrent ingests neither lose, repeat nor renumber each other's pairs.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa

from pipeline.parts import Receipt, discard, read_part, write_part
from pipeline.sources import LoadedPairs, SourceSpec, iter_pair_batches
from pipeline.sources.records import row_id
from pipeline.store import Workspace
from pipeline.store_commit import Plan, commit, read_keys, shards_since
from schemas.config.sources import SourceConfig
from schemas.pair import DROPPED_SCHEMA, LEGACY_IMAGE_REF_TYPE, POOL_SCHEMA, QUARANTINE_SCHEMA

POOL, QUARANTINE, DROPPED, IMAGES = "pool", "quarantine", "dropped", "images"
QUARANTINE_KEY = ["source_file", "row"]
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
        discard(ws, POOL, pool.parts)
        raise
    side[DROPPED].extend(pool.late_duplicates)
    for table, schema, key in ((DROPPED, DROPPED_SCHEMA, "pair_id"),
                               (QUARANTINE, QUARANTINE_SCHEMA, QUARANTINE_KEY)):
        rows = [t for t in side[table] if t.num_rows]
        if rows or not ws.has_table(table):
            ws.append(table, pa.concat_tables(rows) if rows else schema.empty_table(),
                      unique_key=key, schema=schema)
    stats.seconds = time.perf_counter() - start
    stats.cpu_seconds = time.process_time() - cpu
    return stats


def _ingest(ws: Workspace, spec: SourceSpec, stats: IngestStats, pool: PoolParts,
            progress: Callable[[int], None] | None) -> dict[str, list[pa.Table]]:
    """Read the source, writing new pairs as pool parts; the quarantine and dropped rows."""
    known = pool.known
    side: dict[str, list[pa.Table]] = {DROPPED: [], QUARANTINE: []}
    formats: list[str] = []
    for batch in prefetched(iter_pair_batches(spec), PREFETCH_BATCHES):
        if batch.format not in formats:
            formats.append(batch.format)
        stats.rows_read += batch.rows_read
        new, duplicates, present = _split_batch(batch, known)
        if new.num_rows:
            if batch.images:  # bytes first: a pooled pair never names an image not yet stored
                from pipeline.images import store_images  # Pillow loads only for image sources

                store_images(ws, batch.images.values(), source=stats.source)
            origins = _origins(new)
            pool.add(new, origins)
            known = pl.concat([known, origins], how="vertical")
        stats.added += new.num_rows
        stats.already_present += present
        stats.duplicates += duplicates.num_rows
        side[DROPPED] += [duplicates, batch.dropped]
        side[QUARANTINE].append(batch.quarantine)
        stats.quarantined += batch.quarantine.num_rows
        stats.dropped += batch.dropped.num_rows
        if progress is not None:
            progress(stats.rows_read)
    stats.format = ",".join(formats)
    return side


@dataclass
class PoolParts:
    """One ingest's new pairs as uncommitted pool parts, and their one commit.

    The parts are numbered from the pool's largest `ingest_seq` as read at the start. Under the
    commit lock, when other writers committed pool parts since, the parts are rewritten once:
    without the pairs those writers added (recorded as duplicates, or as already present when
    they came from the same origin) and numbered after every committed pair, so `ingest_seq`
    stays unique and follows commit order.
    """

    ws: Workspace
    seen: list[dict[str, Any]]
    known: pl.DataFrame
    first_seq: int
    schema: pa.Schema
    parts: list[Receipt] = field(default_factory=list)
    origins: list[pl.DataFrame] = field(default_factory=list)
    late_duplicates: list[pa.Table] = field(default_factory=list)
    obsolete: list[str] = field(default_factory=list)
    _stats: IngestStats | None = None

    @classmethod
    def open(cls, ws: Workspace) -> PoolParts:
        seen = ws.manifest(POOL)["shards"] if ws.has_table(POOL) else []
        known = _known_pairs(ws, seen)
        first = int(known["ingest_seq"].max() or -1) + 1 if known.height else 0
        return cls(ws, seen, known.drop("ingest_seq"), first, _pool_schema(ws))

    @property
    def rows(self) -> int:
        return sum(int(p["rows"]) for p in self.parts)

    def add(self, new: pa.Table, origins: pl.DataFrame) -> None:
        start = self.first_seq + self.rows
        seqs = pa.array(range(start, start + new.num_rows), pa.int64())
        new = new.set_column(new.schema.get_field_index("ingest_seq"), "ingest_seq", seqs)
        self.parts.append(write_part(self.ws, POOL, new, self.schema))
        self.origins.append(origins)

    def commit(self, stats: IngestStats) -> None:
        if not self.parts:
            if not self.ws.has_table(POOL):
                self.ws.append(POOL, POOL_SCHEMA.empty_table())
            return
        self._stats = stats
        commit(self.ws, POOL, self)

    def __call__(self, current: dict[str, Any] | None) -> Plan:
        shards = list(current["shards"]) if current else []
        fresh = shards_since(self.seen, shards)
        self.seen = shards
        if fresh and self.parts:
            self._rebase(fresh)
        if not self.parts:
            return Plan(None if current is not None else [], self.schema, self.obsolete)
        return Plan([*shards, *self.parts], self.schema, self.obsolete)

    def _rebase(self, fresh: list[dict[str, Any]]) -> None:
        """Rewrite the parts after `fresh` shards (other writers' commits) as described above."""
        committed = read_keys(self.ws, POOL, fresh, ["pair_id", "source", "source_id", "ingest_seq"])
        first = max(self.first_seq, int(committed["ingest_seq"].max() or -1) + 1)
        taken = committed.select("pair_id", _origin_expr().alias("known_origin")).unique("pair_id")
        mine = pl.concat(self.origins).with_row_index("__row")
        clash = mine.join(taken, on="pair_id", how="inner")
        if first == self.first_seq and clash.height == 0:
            return
        same = clash.filter(pl.col("origin") == pl.col("known_origin"))
        other = clash.filter(pl.col("origin") != pl.col("known_origin"))
        self.late_duplicates.append(_duplicate_records(other))
        assert self._stats is not None
        self._stats.added -= clash.height
        self._stats.already_present += same.height
        self._stats.duplicates += clash.height - same.height
        gone = set(clash["pair_id"].to_list())
        parts, origins, seq = [], [], first
        for part, origin in zip(self.parts, self.origins, strict=True):
            rows = read_part(self.ws, POOL, part)
            if gone:
                rows = rows.filter(pa.array([p not in gone for p in origin["pair_id"].to_list()]))
                origin = origin.filter(~pl.col("pair_id").is_in(list(gone)))
            self.obsolete.append(part["file"])
            if rows.num_rows:
                seqs = pa.array(range(seq, seq + rows.num_rows), pa.int64())
                rows = rows.set_column(rows.schema.get_field_index("ingest_seq"), "ingest_seq", seqs)
                parts.append(write_part(self.ws, POOL, rows))
                origins.append(origin)
                seq += rows.num_rows
        self.parts, self.origins, self.first_seq = parts, origins, first


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


def _known_pairs(ws: Workspace, shards: list[dict[str, Any]]) -> pl.DataFrame:
    """(pair_id, origin, ingest_seq) of the pool as of `shards`."""
    if not shards:
        return pl.DataFrame(schema={"pair_id": pl.Utf8, "origin": pl.Utf8, "ingest_seq": pl.Int64})
    frame = read_keys(ws, POOL, shards, ["pair_id", "source", "source_id", "ingest_seq"])
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
    duplicates = _duplicate_records(rows.filter(~pl.col("new") & ~pl.col("same").fill_null(False)))
    if new_mask.all():
        return pairs, duplicates, present
    # filter works chunk by chunk; take would first concatenate every chunk of the batch
    return pairs.filter(pa.array(new_mask)), duplicates, present


def _duplicate_records(dups: pl.DataFrame) -> pa.Table:
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
