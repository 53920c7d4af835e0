"""Embedding as a sharded stage: one task per pool partition, one keyed commit for the stage.

A task reads its partition's active rows, loads only the keys of the embeddings table that
belong to those rows (and, in the attributes view, only their latest attributes), encodes what
is missing with an encoder kept per worker process, and writes the vectors as uncommitted parts
in chunks. Its memory is bounded by the partition, not the pool: no process ever lists every
text. The driver (flows/stages.py on a task runner, or `run_local`) holds receipts only and
`commit` lands every part in one commit keyed by (pair_id, text_hash), receipts in partition
order, so the table's rows are in pool order, as `embed_pairs` has always written them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl

from pipeline.covers import scan_meeting, tagged
from pipeline.embed import (
    EmbedError,
    EmbedStats,
    Encoder,
    _latest_attributes,
    embeddings_schema,
    embeddings_table,
    pair_text,
    text_hash,
    vector_table,
)
from pipeline.parts import Receipt, commit_keyed_parts, discard, write_part
from pipeline.stage import ROWS_PER_PARTITION, Partition, _Timed, plan_partitions, read_partition
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig

Progress = Callable[[int, int], None]
KEY = ["pair_id", "text_hash"]
ATTRIBUTES_VIEW = "conversation+attributes"
_encoders: dict[str, tuple[Encoder, threading.Lock]] = {}
_encoders_lock = threading.Lock()


def cached_encoder(cfg: EmbedConfig) -> tuple[Encoder, threading.Lock]:
    """This process's encoder for `cfg` (loaded on first use, reused by every later partition),
    with the lock its callers take: task threads of one process share one model."""
    key = cfg.model_dump_json()
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = (Encoder(cfg), threading.Lock())
        return _encoders[key]


@dataclass(frozen=True)
class EmbedStage:
    """Vectors of one model and view for the pool's pairs missing them.

    `pair_ids` restricts the stage to those pairs, dropped ones included (retrieval, `synpref
    neighbors`); None means the active pool.
    """

    cfg: EmbedConfig
    view: str = "conversation"
    chunk_rows: int = 8192
    pair_ids: frozenset[str] | None = None
    name: ClassVar[str] = "embed"
    reads: ClassVar[tuple[str, ...]] = ("pair_id", "conversation", "chosen", "rejected")

    @property
    def table(self) -> str:
        return embeddings_table(self.cfg.model, self.view)

    def run(self, ws: Workspace, partition: Partition, *, gone: pl.DataFrame | None = None,
            encoder: Encoder | None = None, progress: Progress | None = None) -> Receipt:
        """Embed one partition's missing pairs as uncommitted parts; the receipt."""
        timer = _Timed()
        rows = self._rows(ws, partition, gone)
        ids = rows["pair_id"].to_list()
        done = partition_keys(ws, self.table, ids, partition)
        done_ids = {pid for pid, _ in done}
        wants_attributes = self.view == ATTRIBUTES_VIEW and ids
        attributes = _latest_attributes(ws, set(ids), partition) if wants_attributes else {}
        lock: threading.Lock | None = None
        pending: list[tuple[str, str, str]] = []
        for row in rows.iter_rows(named=True):
            if self.view == "conversation" and row["pair_id"] in done_ids:
                continue
            if encoder is None:
                encoder, lock = cached_encoder(self.cfg)
            text = pair_text(row, encoder.char_budget, attributes.get(row["pair_id"]))
            key = (row["pair_id"], text_hash(text))
            if key not in done:
                pending.append((key[0], key[1], text))
        del rows, attributes
        parts: list[Receipt] = []
        encode_s = 0.0
        try:
            for start in range(0, len(pending), self.chunk_rows):
                chunk = pending[start : start + self.chunk_rows]
                assert encoder is not None
                t0 = time.perf_counter()
                texts, report = [p[2] for p in chunk], _offset(progress, start, len(pending))
                if lock is not None:
                    with lock:
                        vectors = encoder.encode(texts, progress=report)
                else:
                    vectors = encoder.encode(texts, progress=report)
                encode_s += time.perf_counter() - t0
                schema = embeddings_schema(encoder.dim, self.cfg.model, self.view)
                parts.append(tagged(write_part(ws, self.table, vector_table(chunk, vectors, schema), schema),
                                    partition))
        except BaseException:
            discard(ws, self.table, parts)
            raise
        embedded = len(pending)
        return timer.receipt(self.name, partition.index, len(ids), parts, found=len(ids),
                             embedded=embedded, cached=len(ids) - embedded, encode_seconds=encode_s,
                             dim=encoder.dim if encoder is not None and embedded else 0,
                             backend=encoder.backend if encoder is not None and embedded else "-")

    def _rows(self, ws: Workspace, partition: Partition, gone: pl.DataFrame | None) -> pl.DataFrame:
        if self.pair_ids is not None:
            gone = pl.DataFrame(schema={"pair_id": pl.Utf8})  # the pairs asked for, dropped or not
        frames = list(read_partition(ws, partition, list(self.reads), gone))
        if not frames:
            return pl.DataFrame(schema={c: pl.Utf8 for c in self.reads})
        rows = pl.concat(frames, how="vertical_relaxed")
        if self.pair_ids is not None:
            rows = rows.filter(pl.col("pair_id").is_in(list(self.pair_ids)))
        return rows.unique("pair_id", keep="first", maintain_order=True)

    def commit(self, ws: Workspace, receipts: list[Receipt]) -> int:
        """Land every task's parts as one commit keyed by (pair_id, text_hash), in partition
        order; the rows that landed."""
        return commit_vectors(ws, self.table, receipts, self.cfg.model, self.view)

    def stats(self, receipts: list[Receipt], seconds: float) -> EmbedStats:
        """The stage's EmbedStats from its receipts (what `embed_pairs` has always returned)."""
        embedded = sum(int(r["embedded"]) for r in receipts)
        backends = sorted({str(r["backend"]) for r in receipts if r["backend"] != "-"})
        encode_s = sum(float(r["encode_seconds"]) for r in receipts)
        found = sum(int(r["found"]) for r in receipts)
        requested = len(self.pair_ids) if self.pair_ids is not None else found
        return EmbedStats(view=self.view, model=self.cfg.model, table=self.table,
                          backend=",".join(backends) or "-", requested=requested, embedded=embedded,
                          cached=requested - embedded, seconds=encode_s if embedded else seconds)


def commit_vectors(ws: Workspace, table: str, receipts: list[Receipt], model: str, view: str) -> int:
    """Land vector parts of `table` (the receipts' `parts`, each receipt with the `dim` it wrote)
    as one commit keyed by (pair_id, text_hash), in task order; the rows that landed. Parts of
    different widths are deleted and refused."""
    receipts = sorted(receipts, key=lambda r: r["task"])
    parts = [p for r in receipts for p in r["parts"]]
    dims = {int(r["dim"]) for r in receipts if r["parts"]}
    if not parts:
        return 0
    if len(dims) != 1:
        discard(ws, table, parts)
        raise EmbedError(f"the tasks of {table} wrote vectors of different sizes: {sorted(dims)}")
    return commit_keyed_parts(ws, table, parts, embeddings_schema(dims.pop(), model, view), KEY)


def _offset(progress: Progress | None, start: int, total: int) -> Progress | None:
    """A chunk's (done, n) encode progress as (start + done, total) of its partition."""
    if progress is None:
        return None
    return lambda done, _n: progress(start + done, total)


def partition_keys(ws: Workspace, table: str, pair_ids: list[str],
                   partition: Partition | None = None) -> set[tuple[str, str]]:
    """The (pair_id, text_hash) keys of `table` whose pair is one of `pair_ids`: only the key
    columns of the parts that may hold `partition`'s pairs (pipeline/covers.py; every part without
    one) are read, filtered as they are read, so memory and reads follow the partition."""
    if not pair_ids or not ws.has_table(table) or not ws.row_count(table):
        return set()
    keys = scan_meeting(ws, table, partition).select(KEY).filter(pl.col("pair_id").is_in(pair_ids)).collect()
    return set(keys.iter_rows())


def check_found(ws: Workspace, stage: EmbedStage, receipts: list[Receipt]) -> None:
    """Raise EmbedError naming a requested pair the pool does not hold (error path only)."""
    if stage.pair_ids is None or sum(int(r["found"]) for r in receipts) == len(stage.pair_ids):
        return
    pool = set(ws.scan("pool").select("pair_id").filter(
        pl.col("pair_id").is_in(list(stage.pair_ids))).collect()["pair_id"].to_list())
    missing = sorted(stage.pair_ids - pool)
    if missing:
        raise EmbedError(f"{len(missing)} pair_ids are not in the pool of {ws.uri}, e.g. {missing[0]}")


def _scaled(progress: Progress | None, base: int, rows: int, total: int) -> Progress | None:
    """A partition's (encoded, to encode) as pairs of the whole run: `base` + its share of `rows`."""
    if progress is None:
        return None
    return lambda done, todo: progress(base + rows * done // max(todo, 1), total)


def run_local(ws: Workspace, stage: EmbedStage, *, rows_per_partition: int = ROWS_PER_PARTITION,
              encoder: Encoder | None = None, progress: Progress | None = None) -> EmbedStats:
    """The stage in this process, partition after partition, then one commit (`embed_pairs`)."""
    started = time.perf_counter()
    if not ws.has_table("pool"):
        raise EmbedError(f"workspace {ws.uri} has no pool table; ingest a source first")
    partitions = plan_partitions(ws, rows_per_partition)
    total, offset = sum(p.rows for p in partitions), 0
    receipts: list[Receipt] = []
    try:
        for partition in partitions:
            inner = _scaled(progress, offset, partition.rows, total)
            receipts.append(stage.run(ws, partition, encoder=encoder, progress=inner))
            offset += partition.rows
            if progress is not None:
                progress(offset, total)
        check_found(ws, stage, receipts)
        stage.commit(ws, receipts)
    except BaseException:
        discard(ws, stage.table, [p for r in receipts for p in r["parts"]])
        raise
    return stage.stats(receipts, time.perf_counter() - started)


def receipt_summary(stage: EmbedStage, receipts: list[Receipt], seconds: float) -> dict[str, Any]:
    """What a flow step returns: the EmbedStats fields and the tasks' figures (PIDs, peak RSS)."""
    stats = stage.stats(receipts, seconds)
    return {**stats.__dict__, "tasks": len(receipts), "pids": sorted({int(r["pid"]) for r in receipts}),
            "task_seconds": round(sum(float(r["seconds"]) for r in receipts), 3),
            "task_peak_rss_mb": round(max((float(r["peak_rss_mb"]) for r in receipts), default=0.0), 1),
            "parts": [p["file"] for r in sorted(receipts, key=lambda r: r["task"]) for p in r["parts"]]}
