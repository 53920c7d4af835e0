"""`load_pairs`: any supported source (file, folder, glob, hub id) into the pool's shape.

A source is read file by file and batch by batch (`iter_pair_batches`), so ingesting millions of
pairs keeps memory bounded; `load_pairs` gathers the batches for callers that want one table.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import polars as pl

from pipeline.sources import fast_jsonl, generic
from pipeline.sources.detect import FORMAT_NAMES, FORMATS, SAMPLE_ROWS, detect_format
from pipeline.sources.files import (
    RawRecord,
    SourceReadError,
    container_of,
    expand_paths,
    is_hub_id,
    is_saved_dataset,
    iter_hub_records,
    iter_jsonl_chunks,
    iter_records,
    iter_saved_records,
    strip_suffixes,
)
from pipeline.sources.ranges import SPLIT_BYTES, Unit, counted_units
from pipeline.sources.records import Candidate, LoadedPairs, PairBatchBuilder, RowError
from schemas.errors import ConfigError

BATCH_ROWS = 50_000
PARSE_THREADS = 2
"""Chunks of a JSONL file parsed at once (the ingest's prefetch thread waits on them), at most
polars' thread count: a worker synpref starts runs polars on one thread (POLARS_MAX_THREADS),
so its tasks keep to the core they were given."""
T = TypeVar("T")
R = TypeVar("R")
IMAGE_BATCH_BYTES = 256 << 20
"""A batch also ends once its images hold this many bytes (they stay in memory until stored)."""


@dataclass(frozen=True)
class SourceSpec:
    """How to read one source; `name` is what every pair's `source` column will say."""

    path: str
    format: str = "auto"
    name: str | None = None
    license: str = ""
    label_source: str | None = None
    column_map: dict[str, str] | None = None
    split: str | None = None
    limit: int | None = None
    images: Any = None
    """schemas.config.sources.ImagesConfig (limits, fetching); None for the defaults."""
    split_bytes: int = SPLIT_BYTES
    """Files bigger than this are read in ranges of about this size (pipeline.sources.ranges)."""

    def source_name(self) -> str:
        if self.name:
            return self.name
        if is_hub_id(self.path):
            return self.path.removeprefix("hf://datasets/").removeprefix("hf://")
        from pathlib import Path

        p = Path(self.path.rstrip("/"))
        if p.is_dir():
            return p.name
        return f"{p.parent.name}/{strip_suffixes(p.name)}" if p.parent.name else strip_suffixes(p.name)


def load_pairs(
    path: str,
    *,
    format: str = "auto",
    name: str | None = None,
    license: str = "",
    label_source: str | None = None,
    column_map: dict[str, str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> LoadedPairs:
    """Read a whole source: pairs (ingest_seq = -1), quarantined rows, dropped ties."""
    spec = SourceSpec(path, format, name, license, label_source, column_map, split, limit)
    parts = list(iter_pair_batches(spec))
    fmt = ",".join(dict.fromkeys(p.format for p in parts)) or (format if format != "auto" else "unknown")
    return LoadedPairs.concat(parts, fmt)


def source_files(spec: SourceSpec) -> list[tuple[str, str]]:
    """The (file, label) pairs a source reads, in reading order (a hub id or saved dataset is one)."""
    if is_hub_id(spec.path):
        return [(spec.path, spec.path)]
    if is_saved_dataset(spec.path):
        return [(spec.path, spec.path.rstrip("/").rsplit("/", 1)[-1])]
    return expand_paths(spec.path)


def iter_pair_batches(spec: SourceSpec, *, batch_rows: int = BATCH_ROWS,
                      unit: Unit | None = None) -> Iterator[LoadedPairs]:
    """The source as a stream of LoadedPairs batches (one per JSONL chunk or `batch_rows` rows).

    The source is read unit by unit (pipeline.sources.ranges: its files, big files in byte or
    row-group ranges), and a batch never spans two units, so `unit` reads one of them exactly as
    the whole source reads it, and units can be staged apart. A source with a `limit` is one unit
    (`Unit(None)`): the limit counts rows across its files.
    """
    if spec.format not in ("auto", *FORMAT_NAMES):
        raise ConfigError(f"unknown format {spec.format!r}; one of auto, {', '.join(FORMAT_NAMES)}")
    if spec.label_source not in (None, "human", "ai", "unknown"):
        raise ConfigError(f"label_source must be human, ai or unknown, not {spec.label_source!r}")
    column_map = dict(spec.column_map or {})
    generic.check_column_map(column_map)
    files = source_files(spec)
    if unit is not None and unit.file_index is not None and spec.limit is not None:
        raise ConfigError("a source with a limit is read whole, not file by file")
    if unit is None:
        units = [Unit(None)] if spec.limit is not None else counted_units(files, spec.split_bytes)
    else:
        units = [unit]
    for one in units:
        if one.file_index is None:
            remaining = spec.limit
            for file, label in files:
                if remaining is not None and remaining <= 0:
                    return
                for batch in _file_batches(spec, column_map, files, file, label, Unit(None), remaining,
                                           batch_rows):
                    if remaining is not None:
                        remaining -= batch.rows_read
                    yield batch
        else:
            file, label = files[one.file_index]
            yield from _file_batches(spec, column_map, files, file, label, one, None, batch_rows)


def _file_batches(spec: SourceSpec, column_map: dict[str, str], files: list[tuple[str, str]], file: str,
                  label: str, unit: Unit, remaining: int | None, batch_rows: int) -> Iterator[LoadedPairs]:
    """One file's batches, or one range's (`unit`): the format is detected from the file's head."""
    if unit.first_row is None:
        raise ValueError(f"{file}: {unit.describe()} is not numbered yet (pipeline.sources.ranges.numbered)")
    fmt = "generic" if column_map and spec.format == "auto" else spec.format
    hub = is_hub_id(file) or is_saved_dataset(file)
    if unit.whole_file:
        records = (iter_hub_records(file, spec.split, limit=remaining) if is_hub_id(file)
                   else iter_saved_records(file, spec.split, limit=remaining) if hub
                   else iter_records(file, limit=remaining))
        head = list(itertools.islice(records, SAMPLE_ROWS))
        file_fmt = detect_format(head, file) if fmt == "auto" else fmt
    else:  # a range reads its own rows; only an undeclared format needs the file's head
        file_fmt = fmt if fmt != "auto" else detect_format(
            list(itertools.islice(iter_records(file), SAMPLE_ROWS)), file)
        head = []
        records = iter_records(file, first_row=unit.first_row,
                               byte_range=(unit.start, unit.end) if unit.kind == "bytes" else None,
                               row_groups=(unit.start, unit.end) if unit.kind == "row_groups" else None)
    subset = _subset(label) if len(files) > 1 else None
    ctx = _Context(spec, spec.source_name(), file, label, file_fmt, column_map, subset)
    columnwise = not hub and container_of(file) == "jsonl"
    if columnwise and file_fmt == "prompt-chosen-rejected":
        records.close()  # type: ignore[attr-defined]
        yield from _fast_jsonl_batches(ctx, remaining, unit)
    else:
        yield from _row_batches(ctx, itertools.chain(head, records), batch_rows, subset)


def _subset(label: str) -> str | None:
    """A folder source's file, relative, without the file name: `Adversarial/GPTInst`."""
    return label.rsplit("/", 1)[0] if "/" in label else strip_suffixes(label)


@dataclass
class _Context:
    spec: SourceSpec
    source: str
    file: str
    label: str
    fmt: str
    column_map: dict[str, str]

    subset: str | None = None

    def builder(self) -> PairBatchBuilder:
        label_source = self.spec.label_source or (
            FORMATS[self.fmt].label_source if self.fmt in FORMATS else "unknown")
        return PairBatchBuilder(source=self.source, license=self.spec.license, label_source=label_source,
                                source_file=self.file, file_label=self.label, fmt=self.fmt,
                                images=self.spec.images, subset=self.subset)

    def parser(self) -> Callable[[dict[str, Any]], Candidate | list[Candidate]]:
        if self.fmt == "generic":
            return lambda record: generic.parse(record, self.column_map)
        return FORMATS[self.fmt].parse


def _row_batches(ctx: _Context, records: Iterator[RawRecord], batch_rows: int,
                 subset: str | None) -> Iterator[LoadedPairs]:
    parse = ctx.parser()
    builder = ctx.builder()
    for rec in records:
        if subset is not None and rec.subset is None:
            rec.subset = subset
        _add_record(builder, parse, rec)
        if builder.rows_read >= batch_rows or builder.image_bytes >= IMAGE_BATCH_BYTES:
            yield builder.build()
            builder = ctx.builder()
    if builder.rows_read:
        yield builder.build()


def _add_record(
    builder: PairBatchBuilder, parse: Callable[[dict[str, Any]], Candidate | list[Candidate]], rec: RawRecord
) -> None:
    builder.rows_read += 1
    if rec.error is not None or rec.record is None:
        field, reason = rec.error or ("", "unreadable row")
        builder.quarantine(rec, field, reason)
        return
    try:
        cand = parse(rec.record)
    except RowError as exc:
        builder.quarantine(rec, exc.field, exc.reason)
        return
    for one in cand if isinstance(cand, list) else [cand]:  # a ranking row yields several pairs
        builder.add(rec, one)


def _fast_jsonl_batches(ctx: _Context, limit: int | None, unit: Unit) -> Iterator[LoadedPairs]:
    """prompt/chosen/rejected JSONL: column-wise per chunk, row by row only where a chunk has bad rows."""
    from pipeline.sources.files import parse_jsonl_chunk

    parse = ctx.parser()

    def slow(lines: list[tuple[int, bytes]]) -> LoadedPairs:
        builder = ctx.builder()
        for line_no, line in lines:
            for rec in parse_jsonl_chunk(line + b"\n", line_no):
                rec.subset = ctx.subset
                _add_record(builder, parse, rec)
        return builder.build()

    # small chunks keep the re-read around a malformed line cheap; batches gather them so that
    # the pool gets one shard per ~BATCH_ROWS pairs, not one per chunk
    parts: list[LoadedPairs] = []
    rows = 0
    span = (unit.start, unit.end) if unit.kind == "bytes" else (0, None)
    chunks = iter_jsonl_chunks(ctx.file, chunk_bytes=fast_jsonl.CHUNK_BYTES, start=span[0],
                               end=span[1], first_line=unit.first_row or 1)
    if limit is None:  # chunks parse apart (pyarrow and polars release the GIL), results in order
        results = ordered_map(lambda c: fast_jsonl.read_chunk(c[1], c[0], ctx.builder, slow), chunks,
                              min(PARSE_THREADS, pl.thread_pool_size()))
    else:  # the limit cuts the chunk after the rows read before it
        results = (fast_jsonl.read_chunk(_first_lines(chunk, limit - rows), first_line, ctx.builder, slow)
                   for first_line, chunk in chunks)
    for pieces in results:
        parts += pieces
        read = sum(p.rows_read for p in pieces)
        rows += read
        if limit is not None and rows >= limit:
            break
        if sum(p.rows_read for p in parts) >= BATCH_ROWS:
            yield LoadedPairs.concat(parts, ctx.fmt)
            parts = []
    if parts:
        yield LoadedPairs.concat(parts, ctx.fmt)


def ordered_map(fn: Callable[[T], R], items: Iterator[T], threads: int) -> Iterator[R]:
    """`map(fn, items)` on `threads` threads, in order, at most `2 * threads` items read ahead.

    An exception is raised where its item comes in order; a consumer that stops early leaves
    the items read ahead unprocessed."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="parse") as pool:
        ahead: deque[Future[R]] = deque()
        try:
            for item in items:
                ahead.append(pool.submit(fn, item))
                if len(ahead) >= 2 * threads:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()


def _first_lines(chunk: bytes, n: int) -> bytes:
    """At most n non-blank lines (blank lines are not rows)."""
    out, rows = [], 0
    for line in chunk.split(b"\n")[:-1]:
        if rows >= n:
            break
        out.append(line)
        rows += bool(line.strip())
    return b"\n".join(out) + b"\n" if out else b""


def iter_benchmark_prompts(path: str, *, format: str = "auto", column_map: dict[str, str] | None = None
                           ) -> Iterator[tuple[str, str]]:
    """(item id, first user turn) for every item of a benchmark, ties and identical outputs included.

    Benchmarks are read with the same formats as sources; an item whose responses would be
    quarantined as a pair still has a prompt that must not leak into training data.
    """
    spec = SourceSpec(path, format, column_map=column_map)
    column_map = dict(column_map or {})
    fmt = "generic" if column_map and format == "auto" else format
    files = [(path, path)] if is_hub_id(path) else expand_paths(path)
    for file, label in files:
        records = iter_hub_records(file, None) if is_hub_id(file) else iter_records(file)
        head = list(itertools.islice(records, SAMPLE_ROWS))
        file_fmt = detect_format(head, file) if fmt == "auto" else fmt
        parse = _Context(spec, "", file, label, file_fmt, column_map).parser()
        for rec in itertools.chain(head, records):
            if rec.record is None:
                continue
            try:
                parsed = parse(rec.record)
            except RowError:
                continue
            if isinstance(parsed, list) and not parsed:
                continue
            cand = parsed[0] if isinstance(parsed, list) else parsed
            first_user = next((m["content"] for m in cand.conversation if m["role"] == "user"), None)
            if first_user:
                yield f"{label}:{rec.row}", first_user


__all__ = ["LoadedPairs", "SourceReadError", "SourceSpec", "iter_benchmark_prompts", "iter_pair_batches",
           "load_pairs", "source_files"]
