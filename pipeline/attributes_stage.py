"""Attributes as a partition-map stage: one task per pool partition, one keyed commit per table.

A task reads its partition's active pairs, looks up which of them already have attributes (the
attributes table scanned for those ids only), generates the missing ones batch by batch with the
configured kind (heuristic rules, a vLLM engine, an OpenAI-compatible server; `pipeline.attributes`
does the generating and validating) and writes its own uncommitted parts: attributes, quarantine
(pairs whose output never validated) and preverifications. The driver holds receipts only and
lands every table's parts in one commit each, in partition order, keyed as `generate_attributes`
appends them, so a re-run generates nothing and the rows do not depend on the runner, the worker
count or the partition size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa

from pipeline.attributes import (
    HEURISTIC_MODEL,
    PREVERIFICATIONS_SCHEMA,
    QUARANTINE_KEY,
    AttributeStats,
    Generate,
    _attribute_rows,
    _generate_valid,
    _quarantine_rows,
    heuristic_attributes,
    openai_generator,
    preverify,
    vllm_generator,
)
from pipeline.covers import scan_meeting, tagged
from pipeline.parts import Receipt, commit_keyed_parts, discard, write_part
from pipeline.stage import ROWS_PER_PARTITION, Partition, _Timed, plan_partitions, read_partition
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA
from schemas.config.judges import AttributesConfig
from schemas.errors import ConfigError, InputError
from schemas.pair import POOL_SCHEMA, QUARANTINE_SCHEMA, PairRecord

ATTRIBUTES, QUARANTINE, PREVERIFICATIONS = "attributes", "quarantine", "preverifications"
TABLES: dict[str, tuple[pa.Schema, str | list[str]]] = {
    ATTRIBUTES: (ATTRIBUTES_SCHEMA, "pair_id"),
    QUARANTINE: (QUARANTINE_SCHEMA, QUARANTINE_KEY),
    PREVERIFICATIONS: (PREVERIFICATIONS_SCHEMA, "pair_id"),
}
COUNTS = ("pairs", "generated", "skipped", "retried", "quarantined", "preverified")
Progress = Callable[[int, int], None]
RunPartitions = Callable[["AttributesStage", list[Partition], Progress | None], list[Receipt]]
"""Runs the stage's partition tasks and returns their receipts; reports (pairs planned and done)."""


@dataclass(frozen=True)
class AttributesStage:
    """The missing 5-tuples of the active pool by `cfg`'s generator."""

    cfg: AttributesConfig
    name: ClassVar[str] = "attributes"

    def __post_init__(self) -> None:
        if self.cfg.kind not in ("heuristic", "vllm", "openai"):
            raise ConfigError(f"attributes: unknown kind {self.cfg.kind!r} (heuristic | vllm | openai)")
        if self.cfg.kind != "heuristic" and not self.cfg.model:
            raise ConfigError(f"attributes: kind {self.cfg.kind} needs `model`")

    @property
    def model(self) -> str:
        return HEURISTIC_MODEL if self.cfg.kind == "heuristic" else self.cfg.model

    def _generator(self) -> Generate | None:
        if self.cfg.kind == "vllm":
            return vllm_generator(self.cfg)  # the engine is cached per worker process
        if self.cfg.kind == "openai":
            return openai_generator(self.cfg)
        return None

    def run(self, ws: Workspace, partition: Partition) -> Receipt:
        """Generate one partition's missing attributes as uncommitted parts; the receipt."""
        timer = _Timed()
        frames = list(read_partition(ws, partition, POOL_SCHEMA.names))
        rows = pl.DataFrame(schema={"pair_id": pl.Utf8})
        if frames:
            rows = pl.concat(frames, how="vertical_relaxed")
            rows = rows.unique("pair_id", keep="first", maintain_order=True)
        have = existing_ids(ws, rows["pair_id"], partition)
        todo = rows.filter(~pl.col("pair_id").is_in(have.implode())) if len(have) else rows
        stats = AttributeStats(kind=self.cfg.kind, model=self.model, pairs=rows.height,
                               skipped=rows.height - todo.height)
        generate = self._generator() if todo.height else None
        good_rows: list[pa.Table] = []
        bad_rows: list[pa.Table] = []
        checked: list[dict[str, Any]] = []
        for at in range(0, todo.height, self.cfg.batch_size):
            batch = todo.slice(at, self.cfg.batch_size)
            records = [PairRecord.from_row(r) for r in batch.iter_rows(named=True)]
            if generate is None:
                good = {r.pair_id: heuristic_attributes(r) for r in records}
                bad: dict[str, tuple[str, str]] = {}
            else:
                good, bad = _generate_valid(generate, records, self.cfg.retries, stats)
            good_rows.append(_attribute_rows(good, self.model))
            if bad:
                stats.quarantined += len(bad)
                bad_rows.append(_quarantine_rows(bad, {r.pair_id: r for r in records}, self.model))
            if generate is not None and self.cfg.preverify_objective:
                objective = [r for r in records if r.pair_id in good
                             and good[r.pair_id].objectivity.value == "objective"]
                if objective:
                    checked += [{**row, "model": self.model} for row in preverify(generate, objective)]
        parts: dict[str, list[Receipt]] = {table: [] for table in TABLES}
        try:
            for table, tables in ((ATTRIBUTES, good_rows), (QUARANTINE, bad_rows)):
                rows_out = pa.concat_tables(tables) if tables else None
                if rows_out is not None and rows_out.num_rows:
                    parts[table].append(tagged(write_part(ws, table, rows_out, TABLES[table][0]), partition))
            if checked:
                verified = pa.Table.from_pylist(checked, schema=PREVERIFICATIONS_SCHEMA)
                parts[PREVERIFICATIONS].append(tagged(write_part(ws, PREVERIFICATIONS, verified), partition))
        except BaseException:
            for table, written in parts.items():
                discard(ws, table, written)
            raise
        counts = {k: getattr(stats, k) for k in COUNTS}
        return timer.receipt(self.name, partition.index, rows.height, parts[ATTRIBUTES],
                             quarantine=parts[QUARANTINE], preverifications=parts[PREVERIFICATIONS], **counts)

    def commit(self, ws: Workspace, receipts: list[Receipt], seconds: float) -> AttributeStats:
        """Land every table's parts in one commit each, in partition order; the stage's stats."""
        receipts = sorted(receipts, key=lambda r: r["task"])
        stats = AttributeStats(kind=self.cfg.kind, model=self.model,
                               **{k: sum(int(r[k]) for r in receipts) for k in COUNTS if k != "generated"})
        landed = {}
        for table, (schema, key) in TABLES.items():
            parts = [p for r in receipts for p in _parts(r, table)]
            landed[table] = commit_keyed_parts(ws, table, parts, schema, key) if parts else 0
        stats.generated = landed[ATTRIBUTES]
        stats.preverified = landed[PREVERIFICATIONS]
        stats.seconds = float(f"{seconds:.3f}")
        stats.tasks, stats.pids = len(receipts), sorted({int(r["pid"]) for r in receipts})
        return stats


def _parts(receipt: Receipt, table: str) -> list[Receipt]:
    return list(receipt["parts"] if table == ATTRIBUTES else receipt[table])


def existing_ids(ws: Workspace, pair_ids: pl.Series, partition: Partition | None = None) -> pl.Series:
    """The ids among `pair_ids` (of the pool `partition`) that have attributes: the key column of
    the parts that may hold them (pipeline/covers.py) scanned with the filter, so memory and reads
    follow the partition, not the table."""
    if not len(pair_ids) or not ws.has_table(ATTRIBUTES) or not ws.row_count(ATTRIBUTES):
        return pl.Series("pair_id", [], pl.Utf8)
    found = (scan_meeting(ws, ATTRIBUTES, partition).select("pair_id")
             .filter(pl.col("pair_id").is_in(pair_ids.implode())).collect())
    return found["pair_id"].unique()


def discard_all(ws: Workspace, receipts: list[Receipt]) -> None:
    """Delete every part the receipts name (a failed or abandoned run)."""
    for table in TABLES:
        discard(ws, table, [p for r in receipts for p in _parts(r, table)])


def run_in_process(ws: Workspace) -> RunPartitions:
    """Partitions one after another in this process (the local driver)."""

    def run(stage: AttributesStage, partitions: list[Partition], progress: Progress | None) -> list[Receipt]:
        total, done, receipts = sum(p.rows for p in partitions), 0, []
        for partition in partitions:
            receipts.append(stage.run(ws, partition))
            done += partition.rows
            if progress is not None:
                progress(done, total)
        return receipts

    return run


def run_attributes(ws: Workspace, stage: AttributesStage, *, run: RunPartitions | None = None,
                   rows_per_partition: int = ROWS_PER_PARTITION,
                   progress: Progress | None = None) -> AttributeStats:
    """The stage's partition tasks (`run`: in this process by default), then one commit per table."""
    started = time.perf_counter()
    if not ws.has_table("pool"):
        raise InputError(f"{ws.uri}: the workspace has no pool; ingest a source first")
    partitions = plan_partitions(ws, rows_per_partition)
    receipts: list[Receipt] = []
    try:
        receipts = (run or run_in_process(ws))(stage, partitions, progress)
        return stage.commit(ws, receipts, time.perf_counter() - started)
    except BaseException:
        discard_all(ws, receipts)
        raise
