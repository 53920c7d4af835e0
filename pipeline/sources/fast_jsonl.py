"""Column-wise reading of prompt/chosen/rejected JSONL: the ingest fast path.

pyarrow parses a whole chunk at once and polars does the checks, the key normalization and the
pair_id payload for every row in one pass; only the hash itself runs per row. A chunk that fails
any check (malformed line, wrong type, missing or empty field, identical responses, blank lines)
is split in halves until the bad rows are isolated, and those small pieces go through the
row-by-row path that quarantines them. The ids equal `schemas.pair.compute_pair_id` exactly.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pj
import xxhash

from pipeline.sources.records import LoadedPairs, PairBatchBuilder
from schemas.pair import IMAGE_REF_TYPE, MESSAGE_TYPE, POOL_SCHEMA

SLOW_BELOW_LINES = 256
_TEXT_COLUMNS = ("prompt", "chosen", "rejected")
# Python's str.isspace() also counts the ASCII separators 0x1c-0x1f; Rust's \s does not.
_WHITESPACE = r"[\s\x1c-\x1f]+"
_JSON_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
for _code in range(0x20):
    _JSON_ESCAPES.setdefault(chr(_code), f"\\u{_code:04x}")
_PRIMITIVE = (pa.types.is_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean,
              pa.types.is_null)


def read_chunk(
    chunk: bytes,
    first_line: int,
    new_builder: Callable[[], PairBatchBuilder],
    slow: Callable[[bytes, int], LoadedPairs],
) -> list[LoadedPairs]:
    """The chunk's rows as LoadedPairs pieces, column-wise wherever the rows allow it."""
    lines = chunk.count(b"\n")
    if not lines:
        return []
    fast = _columnwise(chunk, first_line, lines, new_builder())
    if fast is not None:
        return [fast]
    if lines <= SLOW_BELOW_LINES:
        return [slow(chunk, first_line)]
    newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
    middle = int(newlines[lines // 2 - 1]) + 1
    return [
        *read_chunk(chunk[:middle], first_line, new_builder, slow),
        *read_chunk(chunk[middle:], first_line + lines // 2, new_builder, slow),
    ]


def normalized(col: pl.Expr) -> pl.Expr:
    """`schemas.pair.normalize_text` as a polars expression."""
    return col.str.normalize("NFC").str.replace_all(_WHITESPACE, " ").str.strip_chars(" ")


def json_string(col: pl.Expr) -> pl.Expr:
    """The body of a JSON string literal, escaped exactly as json.dumps(ensure_ascii=False) does."""
    return col.str.replace_many(list(_JSON_ESCAPES), list(_JSON_ESCAPES.values()))


def single_turn_pair_ids(frame: pl.DataFrame) -> list[str]:
    """compute_pair_id for rows whose conversation is one user turn (`prompt`)."""
    payload = frame.select(
        pl.concat_str([
            pl.lit('[[["user","'), json_string(normalized(pl.col("prompt"))), pl.lit('"]],"'),
            json_string(normalized(pl.col("chosen"))), pl.lit('","'),
            json_string(normalized(pl.col("rejected"))), pl.lit('"]'),
        ]).alias("payload")
    )["payload"]
    digest = xxhash.xxh3_128_hexdigest
    return [digest(p.encode()) for p in payload.to_list()]


def _columnwise(chunk: bytes, first_line: int, lines: int, builder: PairBatchBuilder) -> LoadedPairs | None:
    try:
        options = pj.ReadOptions(block_size=max(1 << 20, len(chunk)))
        table = pj.read_json(io.BytesIO(chunk), read_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != lines or any(
        c not in table.column_names or table.schema.field(c).type != pa.string() for c in _TEXT_COLUMNS
    ):
        return None
    extras = sorted(c for c in table.column_names if c not in _TEXT_COLUMNS)
    if "system" in extras or not all(any(t(table.schema.field(c).type) for t in _PRIMITIVE) for c in extras):
        return None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    bad = frame.select(
        pl.any_horizontal(
            *[pl.col(c).is_null() for c in _TEXT_COLUMNS],
            *[pl.col(c).str.strip_chars().str.len_bytes() == 0 for c in ("chosen", "rejected")],
            normalized(pl.col("chosen")) == normalized(pl.col("rejected")),
        ).any()
    ).item()
    if bad:
        return None
    n = table.num_rows
    prompts = table.column("prompt").combine_chunks()
    images = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], IMAGE_REF_TYPE))
    messages = pa.StructArray.from_arrays(
        [pa.array(["user"] * n, pa.string()), prompts, images], fields=list(MESSAGE_TYPE)
    )
    conversation = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), messages)
    rows = pl.int_range(first_line, first_line + n, eager=True).cast(pl.Utf8)
    source_ids = (builder.file_label + ":" + rows).to_arrow()
    if extras:
        meta = frame.select(pl.struct(extras).struct.json_encode())[:, 0].to_arrow()
    else:
        meta = pa.array(["{}"] * n, pa.string())
    pairs = pa.Table.from_pydict(
        {
            "pair_id": pa.array(single_turn_pair_ids(frame), pa.string()),
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


def meta_equal(a: str, b: str) -> bool:
    """Meta strings from the two paths differ only in formatting."""
    return json.loads(a) == json.loads(b)
