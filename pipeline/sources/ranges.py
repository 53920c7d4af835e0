"""Staging units: a source's files, with big files cut into byte ranges or row-group ranges.

A task stages one unit, so a source held in one huge file no longer means one task. An
uncompressed JSONL file larger than `split_bytes` is cut into byte ranges that start right after
a newline; a Parquet file into runs of whole row groups of about `split_bytes` (compressed).
Gzip, JSON arrays, CSV and hub datasets stay whole files. Every unit carries the number its first
row has in the file (a JSONL line number, a Parquet row number), so its rows are numbered,
identified (`source_id`) and quarantined exactly as a read of the whole file numbers them. A
Parquet file's numbers come from its footer; a byte range's come from counting the newlines of
the ranges before it (`count_lines`, one cheap pass a task can run), which `numbered` turns into
first rows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

from pipeline.sources.files import SourceReadError, container_of, is_gzipped, is_hub_id, is_saved_dataset

SPLIT_BYTES = 256 << 20
"""Default unit size: about 7 s of staging for one task at the measured 36k pairs per task-second."""
_SEEK_BLOCK = 1 << 16
_COUNT_BLOCK = 32 << 20


@dataclass(frozen=True)
class Unit:
    """What one staging task reads: a whole file (`kind` "file"), the bytes [start, end) of a
    JSONL file, or the row groups [start, end) of a Parquet file. `file_index` is the file's
    position in the source's files; None reads the whole source (a source with a `limit`, which
    counts rows across files). `first_row` is the number of the unit's first row in its file;
    None for a byte range whose earlier lines are not counted yet."""

    file_index: int | None
    kind: Literal["file", "bytes", "row_groups"] = "file"
    start: int = 0
    end: int = 0
    first_row: int | None = 1

    @property
    def whole_file(self) -> bool:
        return self.kind == "file"

    def describe(self) -> str:
        if self.kind == "bytes":
            return f"bytes {self.start}-{self.end}"
        if self.kind == "row_groups":
            return f"row groups {self.start}-{self.end - 1}"
        return "whole file"


def plan_units(files: list[tuple[str, str]], split_bytes: int) -> list[Unit]:
    """The units of a source's files, in reading order, from file sizes, a few short reads around
    each cut, and Parquet footers. Byte ranges after a file's first have `first_row` None."""
    if split_bytes <= 0:
        raise ValueError(f"split_bytes must be positive, not {split_bytes}")
    units: list[Unit] = []
    for index, (file, _) in enumerate(files):
        container = "" if is_hub_id(file) or is_saved_dataset(file) else container_of(file)
        if container == "jsonl" and not file.endswith(".gz") and not is_gzipped(file):
            units += _byte_ranges(index, file, split_bytes)
        elif container == "parquet" and not file.endswith(".gz"):
            units += _row_group_ranges(index, file, split_bytes)
        else:
            units.append(Unit(index))
    return units


def count_lines(file: str, unit: Unit) -> int:
    """How many newlines the byte range of `unit` holds: what the next range's numbers start after."""
    if unit.kind != "bytes":
        raise ValueError(f"only byte ranges are counted, not {unit.describe()}")
    newlines, left = 0, unit.end - unit.start
    try:
        with open(file, "rb") as fh:
            fh.seek(unit.start)
            while left > 0:
                block = fh.read(min(_COUNT_BLOCK, left))
                if not block:
                    break
                newlines += block.count(b"\n")
                left -= len(block)
    except OSError as exc:
        raise SourceReadError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    return newlines


def numbered(units: list[Unit], counts: Mapping[int, int | Future[int]]) -> Iterator[Unit]:
    """`units` with every byte range's first row filled in from `counts` (the newlines of unit i,
    for every byte range but a file's last; a count may still be coming, as a future): a range
    starts after the lines of its file's earlier ranges. Lazy: a unit waits only for the counts
    of the ranges before it."""
    line = 1
    for position, unit in enumerate(units):
        if unit.kind != "bytes":
            yield unit
            continue
        if unit.start == 0:
            line = 1
        yield replace(unit, first_row=line)
        if position in counts:
            count = counts[position]
            line += count if isinstance(count, int) else count.result()


def counted_units(files: list[tuple[str, str]], split_bytes: int) -> Iterator[Unit]:
    """`plan_units` numbered here, in reading order (the one-process ingest): a background thread
    counts the ranges' newlines while the first range is read, so a unit waits only for its
    file's earlier ranges to be counted, not for a pass over the whole file first."""
    units = plan_units(files, split_bytes)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="count-lines") as pool:
        counts = {i: pool.submit(count_lines, files[units[i].file_index][0], units[i])  # type: ignore[index]
                  for i in ranges_to_count(units)}
        try:
            yield from numbered(units, counts)
        finally:  # a reader that stops early leaves no counting behind
            for future in counts.values():
                future.cancel()


def ranges_to_count(units: list[Unit]) -> list[int]:
    """Positions of the byte ranges whose newlines the later ranges of their file need counted."""
    return [i for i, u in enumerate(units) if u.kind == "bytes" and _has_next_range(units, i)]


def _has_next_range(units: list[Unit], i: int) -> bool:
    return i + 1 < len(units) and units[i + 1].kind == "bytes" and units[i + 1].start > 0


def _byte_ranges(index: int, file: str, split_bytes: int) -> list[Unit]:
    """[start, end) ranges of about `split_bytes`, each ending right after a newline (the last at
    the end of the file); one whole-file unit when the file is not bigger than that."""
    try:
        size = os.path.getsize(file)
    except OSError as exc:
        raise SourceReadError(f"{file}: cannot open: {exc.strerror or exc}") from exc
    if size <= split_bytes:
        return [Unit(index)]
    cuts = [0]
    with open(file, "rb") as fh:
        target = split_bytes
        while target < size:
            cut = _after_newline(fh, max(target, cuts[-1]), size)
            if cut >= size:
                break
            cuts.append(cut)
            target = cut + split_bytes
    cuts.append(size)
    if len(cuts) == 2:
        return [Unit(index)]
    return [Unit(index, "bytes", a, b, 1 if a == 0 else None) for a, b in itertools.pairwise(cuts)]


def _after_newline(fh: object, position: int, size: int) -> int:
    """The offset just after the first newline at or after `position` (`size` when none)."""
    fh.seek(position)  # type: ignore[attr-defined]
    while position < size:
        block = fh.read(_SEEK_BLOCK)  # type: ignore[attr-defined]
        if not block:
            break
        found = block.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(block)
    return size


def _row_group_ranges(index: int, file: str, split_bytes: int) -> list[Unit]:
    """Runs of whole row groups of about `split_bytes` compressed (one unit for a small file or a
    file of one row group); a file the footer cannot be read from stays whole, so its reader
    reports the error."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(file).metadata
    except Exception:  # the reader names the problem with the file's row and field context
        return [Unit(index)]
    groups = meta.num_row_groups
    sizes = [sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns))
             for g in range(groups)]
    if groups < 2 or sum(sizes) <= split_bytes:
        return [Unit(index)]
    units: list[Unit] = []
    start, first_row, taken, rows = 0, 1, 0, 0
    for g in range(groups):
        taken += sizes[g]
        rows += meta.row_group(g).num_rows
        if taken >= split_bytes or g == groups - 1:
            units.append(Unit(index, "row_groups", start, g + 1, first_row))
            start, first_row, taken, rows = g + 1, first_row + rows, 0, 0
    return units if len(units) > 1 else [Unit(index)]
