"""Column-wise reading of prompt/chosen/rejected JSONL: the ingest fast path.

pyarrow parses a whole chunk at once and polars does the checks, the key normalization and the
pair_id payload for every row in one pass; only the hash itself runs per row. Rows that fail a
check (empty or identical responses, missing fields) and lines pyarrow cannot parse (it names the
row) go through the row-by-row path that quarantines them with their reason; a chunk with no
usable hint is split in halves. The ids equal `schemas.pair.compute_pair_id` exactly.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pj
import xxhash

from pipeline import text_kernels
from pipeline.sources.records import LoadedPairs, PairBatchBuilder
from schemas.pair import IMAGE_REF_TYPE, MESSAGE_TYPE, POOL_SCHEMA

SLOW_BELOW_LINES = 64
# Small enough that re-reading a chunk around a malformed line stays cheap.
CHUNK_BYTES = 4 << 20
Lines = list[tuple[int, bytes]]
_TEXT_COLUMNS = ("prompt", "chosen", "rejected")
# Python's str.isspace() set: Rust's \s (Unicode White_Space) plus the separators 0x1c-0x1f.
# Runs of two or more, or any single one that is not a plain space, become one space; matching
# single spaces too would cost a replacement per word.
_WHITESPACE = (r"[\s\x1c-\x1f]{2,}|[\t\n\x0b\x0c\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
               r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]")
# Below U+0300 every character is NFC and none composes with what precedes it.
_MAY_CHANGE_UNDER_NFC = r"[^\x00-\x{2ff}]"
_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
for _code in range(0x20):
    _JSON_ESCAPES.setdefault(chr(_code), f"\\u{_code:04x}")
_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'
_ESCAPED_BYTES = np.zeros(256, dtype=np.uint8)
_ESCAPED_BYTES[[*range(0x20), ord('"'), ord("\\")]] = 1
_PRIMITIVE = (pa.types.is_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean,
              pa.types.is_null)
_ERROR_ROW = re.compile(r"in row (\d+)")


def read_chunk(
    chunk: bytes,
    first_line: int,
    new_builder: Callable[[], PairBatchBuilder],
    slow: Callable[[Lines], LoadedPairs],
) -> list[LoadedPairs]:
    """The chunk's rows as LoadedPairs pieces, column-wise wherever the rows allow it."""
    view = memoryview(chunk)
    ends = np.flatnonzero(np.frombuffer(view, dtype=np.uint8) == 10) + 1
    return _read_piece(view, ends, first_line, new_builder, slow)


def _read_piece(view: memoryview, ends: np.ndarray, first_line: int,
                new_builder: Callable[[], PairBatchBuilder], slow: Callable[[Lines], LoadedPairs]
                ) -> list[LoadedPairs]:
    """`view` holds whole lines; `ends[i]` is the offset just after line i's newline."""
    lines = len(ends)
    if not lines:
        return []
    try:
        options = pj.ReadOptions(block_size=max(1 << 20, len(view)))
        table = pj.read_json(pa.BufferReader(pa.py_buffer(view)), read_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        if lines <= SLOW_BELOW_LINES:
            return [slow(_split_lines(view, ends, first_line))]
        hint = _ERROR_ROW.search(str(exc))
        row = int(hint.group(1)) if hint else -1
        cuts = [row, row + 1] if 0 <= row < lines else [lines // 2]
        return _pieces(view, ends, first_line, cuts, new_builder, slow)
    if not _columns_ok(table):  # e.g. nested extras: splitting would not help
        return [slow(_split_lines(view, ends, first_line))]
    if table.num_rows != lines:  # blank lines: halve until the pieces without them read column-wise
        if lines <= SLOW_BELOW_LINES:
            return [slow(_split_lines(view, ends, first_line))]
        return _pieces(view, ends, first_line, [lines // 2], new_builder, slow)
    return _columnwise(table, view, ends, first_line, new_builder(), slow)


def normalized(col: pl.Expr) -> pl.Expr:
    """`schemas.pair.normalize_text` as a polars expression (NFC is applied by `_nfc` beforehand)."""
    return col.str.replace_all(_WHITESPACE, " ").str.strip_chars(" ")


def normalized_text(series: pl.Series) -> pl.Series:
    """`normalized` of a column: ASCII rows by a numba kernel over the Arrow buffers (a regex pass
    per column cost about 1.7 s per GB), the other rows by the polars expression."""
    def by_polars(rest: pl.Series) -> pl.Series:
        return rest.to_frame().select(normalized(pl.col(rest.name)))[rest.name]

    return text_kernels.ascii_then(series, text_kernels.collapse_ascii_whitespace, by_polars)


def json_string(series: pl.Series) -> pl.Series:
    """The body of a JSON string literal, escaped exactly as json.dumps(ensure_ascii=False) does."""
    mask = series.str.contains(_NEEDS_ESCAPE)
    if not mask.any():
        return series
    idx = mask.arg_true()
    escaped = series.gather(idx).str.replace_many(list(_JSON_ESCAPES), list(_JSON_ESCAPES.values()))
    return series.scatter(idx, escaped)


def _needs_escape(arrow: pa.ChunkedArray) -> bool:
    """Whether any string holds a byte JSON escapes: a control character, a quote or a backslash."""
    return text_kernels.holds_any_byte(arrow, _ESCAPED_BYTES)


def _has_bytes_from(arrow: pa.ChunkedArray, lowest: int) -> bool:
    """Whether any string holds a byte >= `lowest` (a scan of the raw UTF-8 buffers)."""
    for chunk in arrow.chunks:
        data = chunk.buffers()[2]
        if data is not None and len(data) and np.frombuffer(data, dtype=np.uint8).max() >= lowest:
            return True
    return False


def nfc(series: pl.Series, arrow: pa.ChunkedArray | None = None) -> pl.Series:
    """NFC, computed only for the rows that can change (`arrow`: the same column, for a fast pre-check)."""
    # U+0300 and above start with byte 0xCC or higher
    if arrow is not None and not _has_bytes_from(arrow, 0xCC):
        return series
    mask = series.str.contains(_MAY_CHANGE_UNDER_NFC)
    if not mask.any():
        return series
    idx = mask.arg_true()
    return series.scatter(idx, series.gather(idx).str.normalize("NFC"))


def single_turn_pair_ids(frame: pl.DataFrame) -> list[str]:
    """compute_pair_id for rows whose conversation is one user turn (`prompt`)."""
    keys = pl.DataFrame([normalized_text(nfc(frame[c])) for c in _TEXT_COLUMNS])
    return _hash_payloads(keys)


def _hash_payloads(keys: pl.DataFrame, table: pa.Table | None = None) -> list[str]:
    """xxh3-128 of each row's compute_pair_id payload; `table` (the raw columns) lets clean columns
    skip escaping: normalization never adds a quote, a backslash or a control character."""
    escaped = keys.select(*[
        json_string(keys[c]) if table is None or _needs_escape(table.column(c)) else keys[c]
        for c in _TEXT_COLUMNS
    ])
    payload = escaped.select(
        pl.concat_str([
            pl.lit('[[["user","'), pl.col("prompt"), pl.lit('"]],"'),
            pl.col("chosen"), pl.lit('","'), pl.col("rejected"), pl.lit('"]'),
        ])
    ).to_series()
    digest = xxhash.xxh3_128_hexdigest
    return [digest(p.encode()) for p in payload.to_list()]


def _columns_ok(table: pa.Table) -> bool:
    schema = table.schema
    if any(c not in schema.names or schema.field(c).type != pa.string() for c in _TEXT_COLUMNS):
        return False
    extras = [f for f in schema if f.name not in _TEXT_COLUMNS]
    return all(f.name != "system" and any(t(f.type) for t in _PRIMITIVE) for f in extras)


def _columnwise(table: pa.Table, view: memoryview, ends: np.ndarray, first_line: int,
                builder: PairBatchBuilder, slow: Callable[[Lines], LoadedPairs]) -> list[LoadedPairs]:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    keys = pl.DataFrame([normalized_text(nfc(frame[c], table.column(c)).fill_null(""))
                         for c in _TEXT_COLUMNS])
    # a normalized text is empty exactly when the original is only whitespace
    bad = frame.select(pl.any_horizontal(*[pl.col(c).is_null() for c in _TEXT_COLUMNS])).to_series()
    bad = bad | (keys["chosen"].str.len_bytes() == 0) | (keys["rejected"].str.len_bytes() == 0)
    bad = bad | (keys["chosen"] == keys["rejected"])
    pieces: list[LoadedPairs] = []
    lines = np.arange(first_line, first_line + table.num_rows)
    if bad.any():
        starts = np.concatenate([[0], ends[:-1]])
        pieces.append(slow([(first_line + i, bytes(view[starts[i] : ends[i] - 1]))
                            for i in bad.arg_true().to_list()]))
        good = ~bad
        frame, keys, table = frame.filter(good), keys.filter(good), table.filter(good.to_arrow())
        lines = lines[good.to_numpy()]
    if frame.height:
        pieces.append(_pool_rows(table, frame, keys, lines, builder))
    return pieces


def _pool_rows(table: pa.Table, frame: pl.DataFrame, keys: pl.DataFrame, lines: np.ndarray,
               builder: PairBatchBuilder) -> LoadedPairs:
    n = table.num_rows
    prompts = table.column("prompt").combine_chunks()
    images = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], IMAGE_REF_TYPE))
    messages = pa.StructArray.from_arrays(
        [pa.array(["user"] * n, pa.string()), prompts, images], fields=list(MESSAGE_TYPE)
    )
    conversation = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), messages)
    source_ids = (builder.file_label + ":" + pl.Series(lines).cast(pl.Utf8)).to_arrow()
    extras = sorted(c for c in frame.columns if c not in _TEXT_COLUMNS)
    subset = builder.subset
    if extras:
        if subset is not None and "subset" not in extras:  # a row's own subset field wins
            frame, extras = frame.with_columns(subset=pl.lit(subset)), sorted([*extras, "subset"])
        meta = frame.select(pl.struct(extras).struct.json_encode()).to_series().to_arrow()
    else:  # as the row-by-row path writes it
        text = "{}" if subset is None else json.dumps({"subset": subset}, ensure_ascii=False)
        meta = pa.array([text] * n, pa.string())
    pairs = pa.Table.from_pydict(
        {
            "pair_id": pa.array(_hash_payloads(keys, table), pa.string()),
            "conversation": conversation,
            "chosen": table.column("chosen"),
            "rejected": table.column("rejected"),
            "source": pa.array([builder.source] * n, pa.string()),
            "source_id": source_ids,
            "label_source": pa.array([builder.label_source or "unknown"] * n, pa.string()),
            "license": pa.array([builder.license] * n, pa.string()),
            "meta": meta,
            "ingest_seq": pa.array(np.full(n, -1, dtype=np.int64)),
        }
    ).cast(POOL_SCHEMA)
    empty = builder.build()
    return LoadedPairs(pairs, empty.quarantine, empty.dropped, builder.fmt, n)


def _split_lines(view: memoryview, ends: np.ndarray, first_line: int) -> Lines:
    starts = [0, *ends[:-1].tolist()]
    pairs = zip(starts, ends.tolist(), strict=True)
    return [(first_line + i, bytes(view[a : b - 1])) for i, (a, b) in enumerate(pairs)]


def _pieces(view: memoryview, ends: np.ndarray, first_line: int, cuts: list[int],
            new_builder: Callable[[], PairBatchBuilder], slow: Callable[[Lines], LoadedPairs]
            ) -> list[LoadedPairs]:
    """Read the lines in pieces split before the given line indexes (no copies: views and offsets)."""
    out: list[LoadedPairs] = []
    bounds = [0, *cuts, len(ends)]
    for lo, hi in itertools.pairwise(bounds):
        if hi <= lo:
            continue
        base = int(ends[lo - 1]) if lo else 0
        piece = view[base : int(ends[hi - 1])]
        out += _read_piece(piece, ends[lo:hi] - base, first_line + lo, new_builder, slow)
    return out
