"""Reading source containers (JSONL, JSON, Parquet, CSV, hub datasets) as numbered records.

Readers yield one `RawRecord` per row so that a bad line becomes a quarantine row instead of an
exception; only a file that cannot be opened or parsed as a whole raises `SourceReadError`.
Gzip is detected by its magic bytes, so `.jsonl.gz` and mislabeled files both read.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from schemas.errors import SynprefError

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
_GZIP_MAGIC = b"\x1f\x8b"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceReadError(SynprefError, RuntimeError):
    """A source cannot be read at all (missing, unreadable, not parseable as a whole)."""


@dataclass(slots=True)
class RawRecord:
    """One row of a source: its 1-based number, the parsed object (or the parse error), the raw text."""

    row: int
    record: dict[str, Any] | None
    raw: str
    error: tuple[str, str] | None = None
    subset: str | None = None


def strip_suffixes(name: str) -> str:
    """`test.jsonl.gz` -> `test`."""
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def container_of(path: str) -> str:
    """jsonl | json | parquet | csv, from the file name (a trailing .gz is transparent)."""
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    raise SourceReadError(f"{path}: unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)}"
                          ", optionally .gz)")


def is_hub_id(path: str) -> bool:
    """`hf://...`, or an `owner/name` that is not a local path.

    A name that ends in a supported file suffix (`data/x.jsonl`) is a file, even when it is
    missing: reading it then fails with "file not found" instead of a hub lookup.
    """
    if path.startswith("hf://"):
        return True
    if os.path.exists(path) or _supported(path):
        return False
    return bool(_HUB_ID.match(path))


def expand_paths(path: str) -> list[tuple[str, str]]:
    """The files a source path names: (file, label) where label is the file relative to the source."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _supported(f.name))
        if not files:
            kinds = ", ".join(SUPPORTED_SUFFIXES)
            raise SourceReadError(f"{path}: folder holds no supported files ({kinds})")
        return [(str(f), str(f.relative_to(p))) for f in files]
    if any(ch in path for ch in "*?["):
        files = sorted(Path(f) for f in _glob(path))
        files = [f for f in files if f.is_file() and _supported(f.name)]
        if not files:
            raise SourceReadError(f"{path}: the pattern matches no supported files")
        return [(str(f), f.name) for f in files]
    if p.is_file():
        return [(str(p), p.name)]
    raise SourceReadError(f"file not found: {path}")


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern, recursive=True)


def _supported(name: str) -> bool:
    base = name[:-3] if name.endswith(".gz") else name
    return base.endswith(SUPPORTED_SUFFIXES)


def is_gzipped(path: str) -> bool:
    """Whether the file starts with gzip's magic bytes; a clear error when it cannot be opened."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == _GZIP_MAGIC
    except OSError as exc:
        raise SourceReadError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def open_binary(path: str) -> IO[bytes]:
    """Open a file for reading bytes, decompressing gzip transparently; a clear error otherwise."""
    try:
        fh: IO[bytes] = open(path, "rb")  # noqa: SIM115 - returned to the caller
        magic = fh.read(2)
        fh.seek(0)
    except OSError as exc:
        raise SourceReadError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    if magic == _GZIP_MAGIC:
        return gzip.open(fh, "rb")  # type: ignore[return-value]
    return fh


def iter_jsonl_chunks(path: str, chunk_bytes: int = 32 << 20, *, start: int = 0, end: int | None = None,
                      first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """Complete lines in chunks of about `chunk_bytes`: (number of the chunk's first line, bytes).

    `start`/`end`: only the bytes [start, end) of an uncompressed file (a range that starts right
    after a newline), its first line numbered `first_line`."""
    line_no = first_line
    rest = b""
    left = None if end is None else end - start
    with open_binary(path) as fh:
        if start:
            fh.seek(start)
        while left is None or left > 0:
            try:
                block = fh.read(chunk_bytes if left is None else min(chunk_bytes, left))
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise SourceReadError(f"{path}: cannot read: {exc}") from exc
            if not block:
                break
            if left is not None:
                left -= len(block)
            block = rest + block
            cut = block.rfind(b"\n")
            if cut < 0:
                rest = block
                continue
            chunk, rest = block[: cut + 1], block[cut + 1 :]
            yield line_no, chunk
            line_no += chunk.count(b"\n")
    if rest:
        yield line_no, rest + b"\n"


def parse_jsonl_chunk(chunk: bytes, first_line: int) -> Iterator[RawRecord]:
    """One record per non-blank line; malformed JSON and non-object lines carry their error."""
    for offset, line in enumerate(chunk.split(b"\n")[:-1]):
        if not line.strip():
            continue
        row = first_line + offset
        text = line.decode("utf-8", errors="surrogateescape")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            reason = f"malformed JSON: {exc.msg} at column {exc.colno}"
            yield RawRecord(row, None, _printable(text), ("", reason))
            continue
        if not isinstance(obj, dict):
            reason = f"expected a JSON object, got {type(obj).__name__}"
            yield RawRecord(row, None, _printable(text), ("", reason))
            continue
        yield RawRecord(row, obj, _printable(text))


def iter_records(path: str, *, limit: int | None = None, byte_range: tuple[int, int] | None = None,
                 row_groups: tuple[int, int] | None = None, first_row: int = 1) -> Iterator[RawRecord]:
    """Every row of one local file, whatever its container; or of one range of it (`byte_range`
    of a JSONL file, `row_groups` of a Parquet file), numbered from `first_row`."""
    container = container_of(path)
    if container == "jsonl":
        start, end = byte_range or (0, None)
        records: Iterator[RawRecord] = (
            rec for first, chunk in iter_jsonl_chunks(path, start=start, end=end, first_line=first_row)
            for rec in parse_jsonl_chunk(chunk, first))
    elif container == "json":
        records = _iter_json(path)
    elif container == "parquet":
        records = _iter_parquet(path, row_groups, first_row)
    else:
        records = _iter_csv(path)
    for count, rec in enumerate(records, 1):
        yield rec
        if limit is not None and count >= limit:
            return


def iter_hub_records(hub_id: str, split: str | None, *, limit: int | None = None) -> Iterator[RawRecord]:
    """Rows of a Hugging Face hub dataset (needs network or a warm datasets cache)."""
    import datasets

    name = hub_id.removeprefix("hf://datasets/").removeprefix("hf://")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        raise SourceReadError(f"{hub_id}: cannot load the hub dataset: {exc}") from exc
    yield from _dataset_records(ds, limit)


def is_saved_dataset(path: str) -> bool:
    """A folder written by `datasets`' save_to_disk (a Dataset or a DatasetDict)."""
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in ("state.json", "dataset_dict.json"))


def iter_saved_records(path: str, split: str | None, *, limit: int | None = None) -> Iterator[RawRecord]:
    """Rows of a save_to_disk folder; image features arrive as {bytes, path}, not re-encoded."""
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as exc:
        raise SourceReadError(f"{path}: cannot load the saved dataset: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else next(iter(ds)))
        if name not in ds:
            raise SourceReadError(f"{path}: no split {name!r} (has {', '.join(ds)})")
        ds = ds[name]
    yield from _dataset_records(ds, limit)


def _dataset_records(ds: Any, limit: int | None) -> Iterator[RawRecord]:
    """Rows of a `datasets` Dataset, Image() columns undecoded so their original bytes are kept."""
    import datasets

    for column, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):
            ds = ds.cast_column(column, datasets.List(datasets.Image(decode=False)))
    for i, row in enumerate(ds, 1):  # type: ignore[arg-type]
        record = dict(row)
        yield RawRecord(i, record, _printable(json.dumps(record, ensure_ascii=False, default=raw_default)))
        if limit is not None and i >= limit:
            return


def _iter_json(path: str) -> Iterator[RawRecord]:
    with open_binary(path) as fh:
        try:
            data = fh.read()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise SourceReadError(f"{path}: cannot read: {exc}") from exc
    try:
        doc = json.loads(data.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise SourceReadError(f"{path}: not valid JSON: {exc.msg} at {where}") from exc
    if isinstance(doc, list):
        groups: list[tuple[str | None, list[Any]]] = [(None, doc)]
    elif isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        # {"subset": [records], ...} as OffsetBias ships its benchmark
        groups = list(doc.items())
    elif isinstance(doc, dict):
        groups = [(None, [doc])]
    else:
        raise SourceReadError(f"{path}: expected a JSON array of objects, got {type(doc).__name__}")
    row = 0
    for subset, items in groups:
        for item in items:
            row += 1
            raw = _printable(json.dumps(item, ensure_ascii=False))
            if isinstance(item, dict):
                yield RawRecord(row, item, raw, subset=subset)
            else:
                yield RawRecord(row, None, raw, ("", f"expected a JSON object, got {type(item).__name__}"),
                                subset=subset)


def _iter_parquet(path: str, row_groups: tuple[int, int] | None = None, first_row: int = 1
                  ) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        with open_binary(path) as fh:
            pf = pq.ParquetFile(io.BytesIO(fh.read()) if path.endswith(".gz") else path)
    except Exception as exc:
        raise SourceReadError(f"{path}: not a readable Parquet file: {exc}") from exc
    groups = None if row_groups is None else list(range(*row_groups))
    row = first_row - 1
    for batch in pf.iter_batches(batch_size=10_000, row_groups=groups):
        for item in batch.to_pylist():
            row += 1
            yield RawRecord(row, item, _printable(json.dumps(item, ensure_ascii=False, default=raw_default)))


def _iter_csv(path: str) -> Iterator[RawRecord]:
    with open_binary(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.DictReader(text)
        try:
            for row, item in enumerate(reader, 1):
                raw = _printable(json.dumps(item, ensure_ascii=False))
                if None in item:
                    yield RawRecord(row, None, raw, ("", "row has more cells than the header"))
                else:
                    yield RawRecord(row, dict(item), raw)
        except csv.Error as exc:
            raise SourceReadError(f"{path}: not readable as CSV: {exc}") from exc


def raw_default(value: Any) -> str:
    """JSON for the `raw` text of a row: binary values (image bytes) and PIL images as a short tag."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    size = getattr(value, "size", None)
    if type(value).__module__.startswith("PIL") and isinstance(size, tuple):
        return f"<image {size[0]}x{size[1]}>"
    return str(value)


def _printable(text: str) -> str:
    """The raw text as storable UTF-8: undecodable bytes become U+FFFD."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")
