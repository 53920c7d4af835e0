"""Export as a stage contract: pair_id-range buckets, then shards of exactly `shard_rows` pairs.

A task holds one pool partition (map), one bucket (reduce) or one output shard (write), never
the whole curated table, and the driver holds receipts and counts, never rows or id lists.
Buckets are ranges of the pair_id's hex prefix, so the buckets in order, each sorted by pair_id,
are the whole export in pair_id order, and shard i is its rows [i * shard_rows, (i + 1) *
shard_rows). The files therefore do not depend on the runner, the worker count, the partition
size or the bucket count.

Phases: key maps (gold, silver and decisions for the loop's curation, `dropped` for the active
pool) and pool maps write scratch files per bucket under `_shuffle/export/<token>/`; a reduce per
bucket joins them, swaps flipped pairs and writes the bucket's curated rows sorted by pair_id;
the driver turns the buckets' row counts into shard ranges; a write task per shard writes the
`curated` part and the `--out` file; one commit then lands the table, the card and the folder.
"""

from __future__ import annotations

import dataclasses
import io
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import fsspec
import polars as pl
import pyarrow.parquet as pq

from pipeline.consistency import curated_selection
from pipeline.export import (
    _REF,
    CURATED,
    Progress,
    curated_rows,
    curated_schema,
    curated_table,
    has_images,
    image_counts,
    image_refs,
    normalize_selection,
)
from pipeline.parts import Receipt, discard, write_part
from pipeline.pool import INGEST_STAGE
from pipeline.stage import (
    DROPPED,
    POOL,
    ROWS_PER_PARTITION,
    SHUFFLE,
    Partition,
    _Timed,
    plan_partitions,
    read_partition,
)
from pipeline.store import Workspace
from pipeline.store_commit import Plan, commit
from schemas.labels import DECISIONS_SCHEMA, LABELS_SCHEMA
from schemas.pair import DROPPED_SCHEMA, POOL_SCHEMA

Select = Literal["pool", "loop", "given"]
KEY_TABLES: dict[str, tuple[str, ...]] = {"pool": (DROPPED,), "loop": ("gold", "silver", "decisions"),
                                          "given": ()}
_KEY_SCHEMAS = {DROPPED: DROPPED_SCHEMA, "gold": LABELS_SCHEMA, "silver": LABELS_SCHEMA,
                "decisions": DECISIONS_SCHEMA}
COUNTED = ("source", "label_source", "license", "origin", "round", "filter", "flipped")
_NONE = pl.DataFrame(schema={"pair_id": pl.Utf8})
Call = tuple[str, tuple[Any, ...]]
RunTasks = Callable[["ExportStage", list[Call]], list[Receipt]]
"""Runs `(method, args)` calls of a stage as tasks (anywhere) and returns their receipts in order."""
CardFn = Callable[[dict[str, dict[str, int]], int], str]


def bucket_of(buckets: int) -> pl.Expr:
    """The pair_id's range bucket: its first 8 hex digits scaled to `buckets`, so bucket order is
    pair_id order (pool ids are 32 hex digits; anything else lands in bucket 0)."""
    prefix = pl.col("pair_id").str.slice(0, 8).str.to_integer(base=16, strict=False).fill_null(0)
    return (prefix.cast(pl.UInt64) * buckets // (1 << 32)).cast(pl.Int64)


def _ipc(frame: pl.DataFrame) -> bytes:
    return frame.write_ipc(None, compression="lz4").getvalue()


@dataclass(frozen=True)
class ExportStage:
    """What to export and where; the task methods, each returning a receipt."""

    select: Select
    shard_rows: int = 50_000
    buckets: int = 0
    """Range buckets (reduce tasks); 0: one per output shard's worth of pool rows, at least one per
    pool partition. The files do not depend on it."""
    token: str = ""
    to_table: bool = True
    staging: str | None = None
    """The fsspec URL that write tasks put `data/*.parquet` under, swapped in for `--out` at commit."""
    include_flipped: bool = True
    use_decisions: bool = False
    name: ClassVar[str] = "export"

    def _folder(self, *parts: str) -> str:
        return "/".join([SHUFFLE, self.name, self.token, *parts])

    def _scatter(self, ws: Workspace, frame: pl.DataFrame, file: str) -> list[int]:
        written = []
        keyed = frame.with_columns(__bucket=bucket_of(self.buckets))
        for (bucket,), rows in keyed.partition_by("__bucket", as_dict=True).items():
            ws.write_bytes(self._folder(f"bucket-{bucket:05d}", f"{file}.ipc"), _ipc(rows.drop("__bucket")))
            written.append(int(bucket))  # type: ignore[call-overload]
        return sorted(written)

    def run_keys(self, ws: Workspace, partition: Partition) -> Receipt:
        """One partition of a key table (labels, decisions, dropped) to the buckets."""
        timer, table = _Timed(), partition.table
        frames = list(read_partition(ws, partition, _KEY_SCHEMAS[table].names, _NONE))
        frame = pl.concat(frames) if frames else pl.DataFrame()
        if table == DROPPED and frame.height:
            frame = frame.filter(pl.col("stage") != INGEST_STAGE).select("pair_id")
        written = self._scatter(ws, frame, f"{table}-{partition.index:06d}") if frame.height else []
        return timer.receipt(self.name, partition.index, frame.height, [], phase=f"keys:{table}",
                             buckets=written)

    def run_pool(self, ws: Workspace, partition: Partition) -> Receipt:
        """One pool partition, every row (dropped pairs too: a curation may name them), to the buckets."""
        timer = _Timed()
        frames = list(read_partition(ws, partition, POOL_SCHEMA.names, _NONE))
        frame = pl.concat(frames) if frames else pl.DataFrame()
        written = self._scatter(ws, frame, f"{POOL}-{partition.index:06d}") if frame.height else []
        return timer.receipt(self.name, partition.index, frame.height, [], phase="pool", buckets=written)

    def _read(self, ws: Workspace, bucket: int, kind: str, schema: Any) -> pl.DataFrame:
        folder = self._folder(f"bucket-{bucket:05d}")
        frames = [pl.read_ipc(ws.read_bytes(f"{folder}/{n}")) for n in ws.listdir(folder)
                  if n.rsplit("-", 1)[0] == kind]
        if frames:
            return pl.concat(frames, how="vertical_relaxed")
        return pl.DataFrame(schema=schema) if isinstance(schema, dict) else pl.from_arrow(
            schema.empty_table())  # type: ignore[return-value]

    def _selection(self, ws: Workspace, bucket: int, pool: pl.DataFrame) -> pl.DataFrame:
        if self.select == "pool":
            gone = self._read(ws, bucket, DROPPED, {"pair_id": pl.Utf8})
            return normalize_selection(pool.select("pair_id").join(gone, on="pair_id", how="anti"))
        if self.select == "given":
            return normalize_selection(self._read(ws, bucket, "selection", {"pair_id": pl.Utf8}))
        gold, silver = (self._read(ws, bucket, t, LABELS_SCHEMA) for t in ("gold", "silver"))
        decided = self._read(ws, bucket, "decisions", DECISIONS_SCHEMA) if self.use_decisions else None
        chosen = curated_selection(gold, silver, decided)
        if not self.include_flipped:
            chosen = chosen.filter(~chosen["flipped"])
        return normalize_selection(chosen)

    def run_reduce(self, ws: Workspace, bucket: int) -> Receipt:
        """Join one bucket's pool rows with its selection; write its curated rows sorted by pair_id."""
        timer = _Timed()
        pool = self._read(ws, bucket, POOL, POOL_SCHEMA).unique("pair_id", keep="first", maintain_order=True)
        selection = self._selection(ws, bucket, pool)
        joined = pool.join(selection, on="pair_id", how="inner")
        missing = selection.join(joined.select("pair_id"), on="pair_id", how="anti")["pair_id"].sort()
        curated = curated_rows(joined).sort("pair_id")
        images = has_images(curated)
        if curated.height:
            ws.write_bytes(self._folder("sorted", f"bucket-{bucket:05d}.ipc"), _ipc(curated))
        if images:
            ws.write_bytes(self._folder("images", f"bucket-{bucket:05d}.ipc"), _ipc(image_refs(curated)))
        counts = {c: [(v, int(n)) for v, n in curated.group_by(c).len().iter_rows()] for c in COUNTED}
        return timer.receipt(self.name, bucket, pool.height, [], phase="reduce", selected=curated.height,
                             counts=counts, images=images, missing=missing.len(),
                             missing_examples=missing.head(3).to_list())

    def run_write(self, ws: Workspace, shard: int, of: int, slices: list[tuple[int, int, int]],
                  images: bool) -> Receipt:
        """Shard `shard` of `of`: (bucket, first row, rows) slices of the sorted buckets, written as
        a `curated` part and as `data/train-<shard>-of-<of>.parquet` of the staging folder."""
        timer = _Timed()
        frames = [pl.read_ipc(ws.read_bytes(self._folder("sorted", f"bucket-{b:05d}.ipc"))).slice(start, n)
                  for b, start, n in slices]
        if images:
            frames = [f if "images" in f.columns else f.with_columns(
                pl.lit([], dtype=pl.List(_REF)).alias("images")) for f in frames]
        frame = pl.concat(frames, how="vertical_relaxed").rechunk() if frames else pl.from_arrow(
            curated_schema(False).empty_table())
        assert isinstance(frame, pl.DataFrame)
        table = curated_table(ws, frame, images=images).combine_chunks()
        parts = [write_part(ws, CURATED, table)] if self.to_table and table.num_rows else []
        if self.staging is not None:
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            fs, root = fsspec.core.url_to_fs(self.staging)
            fs.makedirs(f"{root}/data", exist_ok=True)
            with fs.open(f"{root}/data/{shard_name(shard, of)}", "wb") as fh:
                fh.write(buf.getvalue())
        return timer.receipt(self.name, shard, table.num_rows, parts, phase="write", written=table.num_rows)

    def run_images(self, ws: Workspace) -> Receipt:
        """The card's distinct-image counts over every bucket's image references."""
        timer, folder = _Timed(), self._folder("images")
        frames = [pl.read_ipc(ws.read_bytes(f"{folder}/{n}")) for n in ws.listdir(folder)]
        refs = pl.concat(frames).unique() if frames else pl.DataFrame(
            schema={"source": pl.Utf8, "license": pl.Utf8, "format": pl.Utf8, "key": pl.Utf8})
        return timer.receipt(self.name, 0, refs.height, [], phase="images", image_counts=image_counts(refs))

    def cleanup(self, ws: Workspace) -> None:
        ws.remove(self._folder())


def shard_name(shard: int, of: int) -> str:
    return f"train-{shard:05d}-of-{of:05d}.parquet"


def shard_slices(bucket_rows: list[tuple[int, int]], shard_rows: int) -> list[list[tuple[int, int, int]]]:
    """Cut buckets (bucket, rows), in bucket order, into shards of `shard_rows` rows: per shard
    its (bucket, first row, rows) slices. Always at least one (maybe empty) shard."""
    total = sum(n for _, n in bucket_rows)
    shards: list[list[tuple[int, int, int]]] = [[] for _ in range(max(1, math.ceil(total / shard_rows)))]
    offset = 0
    for bucket, rows in bucket_rows:
        start = 0
        while start < rows:
            shard, within = divmod(offset, shard_rows)
            take = min(rows - start, shard_rows - within)
            shards[shard].append((bucket, start, take))
            start, offset = start + take, offset + take
    return shards


def merge_counts(receipts: list[Receipt]) -> dict[str, dict[str, int]]:
    """The card's counts per provenance column, summed over buckets: most pairs first, then by value."""
    out: dict[str, dict[str, int]] = {}
    for column in COUNTED:
        summed: dict[Any, int] = {}
        for r in receipts:
            for value, n in r["counts"][column]:
                summed[value] = summed.get(value, 0) + n
        order = sorted(summed.items(), key=lambda kv: (-kv[1], kv[0] is not None, kv[0]))
        out[column] = {(str(k) if k != "" else "(none)"): n for k, n in order}
    return out


def run_in_process(stage: ExportStage, calls: list[Call], ws: Workspace) -> list[Receipt]:
    return [getattr(stage, method)(ws, *args) for method, args in calls]


@dataclass
class ExportDone:
    """What the driver keeps of an export: counts and receipts' figures, never rows."""

    rows: int
    shards: int
    relabeled: int
    counts: dict[str, dict[str, int]]
    card: str
    tasks: int
    pids: list[int]
    task_seconds: float
    task_peak_rss_mb: float


def _staging(out_dir: str, token: str) -> tuple[Any, str, str]:
    """(fs, root, staging URL): a sibling folder of the target on the same filesystem."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    parent = root.rstrip("/").rsplit("/", 1)[0] if "/" in root.rstrip("/") else ""
    if _is_local(fs):
        Path(parent or ".").mkdir(parents=True, exist_ok=True)
        return fs, root, tempfile.mkdtemp(prefix=".export-", dir=parent or None)
    staging = f"{parent}/.export-{token}"
    return fs, root, fs.unstrip_protocol(staging)


def _is_local(fs: Any) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _publish(fs: Any, staging: str, root: str, card: str) -> None:
    """The staging folder (shards + card) in place of `root`, whole: the old export or the new one."""
    _, staged = fsspec.core.url_to_fs(staging)
    with fs.open(f"{staged}/README.md", "wb") as fh:
        fh.write(card.encode("utf-8"))
    if _is_local(fs):
        target = Path(root)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            Path(staged).rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            Path(staged).rename(target)
        return
    if fs.exists(root):
        fs.rm(root, recursive=True)
    fs.mv(staged, root, recursive=True)


def _drop_staging(fs: Any, staging: str) -> None:
    _, staged = fsspec.core.url_to_fs(staging)
    if fs.exists(staged):
        fs.rm(staged, recursive=True)


def run_export(
    ws: Workspace, stage: ExportStage, card: CardFn, *, out_dir: str | None = None,
    selection: pl.DataFrame | None = None, run: RunTasks | None = None, progress: Progress | None = None,
    rows_per_partition: int = ROWS_PER_PARTITION,
) -> ExportDone:
    """Drive an export: maps, reduces, writes as tasks through `run` (this process by default),
    then one commit of `curated` (if `stage.to_table`) and the swap of `out_dir`."""
    tasks = run or (lambda s, calls: run_in_process(s, calls, ws))
    partitions = plan_partitions(ws, rows_per_partition)
    # about one bucket per output shard (and no fewer than partitions): a reduce holds about a
    # shard's pool rows and a write reads one or two buckets
    buckets = max(1, len(partitions), math.ceil(sum(p.rows for p in partitions) / stage.shard_rows))
    stage = dataclasses.replace(stage, buckets=stage.buckets or buckets,
                                token=stage.token or uuid.uuid4().hex[:12])
    given: list[int] = []
    if stage.select == "given":  # the caller's frame: already in this process
        if selection is None:
            raise ValueError("a given export needs its selection")
        given = stage._scatter(ws, normalize_selection(selection), "selection-000000")
    fs = root = None
    if out_dir is not None:
        fs, root, staging = _staging(out_dir, stage.token)
        stage = dataclasses.replace(stage, staging=staging)
    receipts: list[Receipt] = []
    try:
        keys = [("run_keys", (p,)) for t in KEY_TABLES[stage.select]
                for p in plan_partitions(ws, rows_per_partition, t)]
        receipts += tasks(stage, keys + [("run_pool", (p,)) for p in partitions])
        buckets = sorted({b for r in receipts for b in r["buckets"]} | set(given))
        reduced = tasks(stage, [("run_reduce", (b,)) for b in buckets])
        receipts += reduced
        missing = sum(int(r["missing"]) for r in reduced)
        if missing:
            examples = sorted(e for r in reduced for e in r["missing_examples"])[:3]
            raise ValueError(f"export selection names {missing} pair_id(s) not in the pool, e.g. {examples}")
        total = sum(int(r["selected"]) for r in reduced)
        images = any(r["images"] for r in reduced)
        counts = merge_counts(reduced)
        if images:
            receipts += (found := tasks(stage, [("run_images", ())]))
            counts.update(found[0]["image_counts"])
        text = card(counts, total)
        slices = shard_slices([(int(r["task"]), int(r["selected"])) for r in reduced if r["selected"]],
                              stage.shard_rows)
        if progress is not None and stage.to_table:
            progress("workspace table", 0, total)
        written = tasks(stage, [("run_write", (i, len(slices), s, images)) for i, s in enumerate(slices)])
        receipts += written
        if stage.to_table:
            parts = [p for r in written for p in r["parts"]]
            commit(ws, CURATED, lambda current: Plan(
                parts, curated_schema(images), [s["file"] for s in (current or {}).get("shards", [])]))
            ws.write_bytes(f"{CURATED}/README.md", text.encode())
            if progress is not None:
                progress("workspace table", total, total)
        if fs is not None and root is not None and stage.staging is not None:
            _publish(fs, stage.staging, root, text)
            if progress is not None:
                for i in range(len(slices)):
                    progress("export shards", min((i + 1) * stage.shard_rows, total), total)
    except BaseException:
        discard(ws, CURATED, [p for r in receipts if r.get("phase") == "write" for p in r["parts"]])
        if fs is not None and stage.staging is not None:
            _drop_staging(fs, stage.staging)
        raise
    finally:
        stage.cleanup(ws)
    flipped = counts["flipped"].get("True", 0)
    shards = len(slices) if stage.staging is not None else sum(len(r["parts"]) for r in written)
    return ExportDone(total, shards, flipped, counts, text, len(receipts),
                      sorted({int(r["pid"]) for r in receipts}),
                      round(sum(float(r["seconds"]) for r in receipts), 3),
                      round(max((float(r["peak_rss_mb"]) for r in receipts), default=0.0), 1))
