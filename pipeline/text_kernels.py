"""Numba kernels over Arrow string buffers for the two hottest text steps of cleaning.

Exact dedup squashes every text (case and whitespace erased) and decontamination splits every
conversation into lowercase `\\w+` words; polars does both through its Unicode machinery (a
lowercase pass, a regex pass, a string per word). Almost all pool text is ASCII, where both steps
are a byte-to-byte table lookup, so these kernels walk the `large_string` buffers once and write
the result directly: the squashed bytes, or one 64-bit hash per word. Rows holding any byte
>= 0x80 are only flagged here; callers send them through the polars path and scatter them back.

`word_hash` is the one hash of a word's UTF-8 bytes (FNV-1a 64 then the splitmix64 finalizer):
the ASCII tokenizer computes it on the fly and `hash_strings` computes it on words that polars
tokenized, so the two paths agree on every word.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import numba
import numpy as np
import polars as pl
import pyarrow as pa

Strings: TypeAlias = pl.Series | pa.Array | pa.ChunkedArray
"""A string column: a polars Series, or an Arrow (large_)string array, chunked or not."""

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)

_LOWER = np.arange(256, dtype=np.uint8)
"""Byte -> byte with ASCII A-Z lowercased (bytes >= 0x80 never reach the output)."""
_LOWER[ord("A") : ord("Z") + 1] += 32

_KEEP = np.ones(256, dtype=np.uint8)
"""0 for the ASCII whitespace squash erases: space, \\t \\n \\x0b \\x0c \\r and \\x1c-\\x1f."""
_KEEP[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = 0

_SPACE = 1 - _KEEP
"""1 for the ASCII whitespace of `schemas.pair.normalize_text` (the same bytes)."""

_WORD = np.zeros(256, dtype=np.uint8)
"""1 for the ASCII bytes of `\\w`: [A-Za-z0-9_]."""
for _lo, _hi in (("A", "Z"), ("a", "z"), ("0", "9"), ("_", "_")):
    _WORD[ord(_lo) : ord(_hi) + 1] = 1


@numba.njit(cache=True, nogil=True)
def _finalize(h: np.uint64) -> np.uint64:
    h = (h ^ (h >> _S30)) * _MIX1
    h = (h ^ (h >> _S27)) * _MIX2
    return h ^ (h >> _S31)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _squash_ascii(data: np.ndarray, offsets: np.ndarray, lower: np.ndarray, keep: np.ndarray,
                  out: np.ndarray, out_offsets: np.ndarray, non_ascii: np.ndarray) -> int:
    """Per row: bytes lowercased with the whitespace dropped into `out`; rows with a byte >= 0x80
    are flagged and left empty. Returns the bytes written."""
    n = len(offsets) - 1
    j = 0
    for i in range(n):
        out_offsets[i] = j
        row_start = j
        acc = 0
        for k in range(offsets[i], offsets[i + 1]):
            b = data[k]
            acc |= b
            out[j] = lower[b]  # branch-free: always write, advance only over kept bytes
            j += keep[b]
        if acc >= 128:
            non_ascii[i] = True
            j = row_start
        else:
            non_ascii[i] = False
    out_offsets[n] = j
    return j


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _collapse_ascii(data: np.ndarray, offsets: np.ndarray, space: np.ndarray, out: np.ndarray,
                    out_offsets: np.ndarray, non_ascii: np.ndarray) -> int:
    """Per row: every run of ASCII whitespace made one space, none at either end, into `out`; rows
    with a byte >= 0x80 are flagged and left empty. Returns the bytes written."""
    n = len(offsets) - 1
    j = 0
    for i in range(n):
        out_offsets[i] = j
        row_start = j
        acc = 0
        pending = False
        for k in range(offsets[i], offsets[i + 1]):
            b = data[k]
            acc |= b
            if space[b]:
                pending = j > row_start
            else:
                if pending:
                    out[j] = 32
                    j += 1
                    pending = False
                out[j] = b
                j += 1
        if acc >= 128:
            non_ascii[i] = True
            j = row_start
        else:
            non_ascii[i] = False
    out_offsets[n] = j
    return j


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _any_of(data: np.ndarray, table: np.ndarray) -> bool:
    """Whether a byte of `data` is marked in `table`, stopping at the first."""
    k, n = 0, len(data)
    while k < n and not table[data[k]]:
        k += 1
    return k < n


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _count_ascii_words(data: np.ndarray, offsets: np.ndarray, word: np.ndarray, counts: np.ndarray,
                       non_ascii: np.ndarray) -> int:
    """Per row: the number of `\\w+` runs (0 for rows with a byte >= 0x80, which are flagged)."""
    n = len(offsets) - 1
    total = 0
    for i in range(n):
        acc = 0
        c = 0
        prev = 0
        for k in range(offsets[i], offsets[i + 1]):
            b = data[k]
            acc |= b
            w = word[b]
            c += w & (prev ^ 1)  # a word starts where a word byte follows a non-word byte
            prev = w
        if acc >= 128:
            non_ascii[i] = True
            c = 0
        else:
            non_ascii[i] = False
        counts[i] = c
        total += c
    return total


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _hash_ascii_words(data: np.ndarray, offsets: np.ndarray, lower: np.ndarray, word: np.ndarray,
                      counts: np.ndarray, out: np.ndarray) -> int:
    """The word hash of every lowercase `\\w+` word of the rows with counts[i] > 0, in order."""
    j = 0
    for i in range(len(offsets) - 1):
        if counts[i] == 0:
            continue
        h = _FNV_OFFSET
        inside = False
        for k in range(offsets[i], offsets[i + 1]):
            b = data[k]
            if word[b]:
                h = (h ^ np.uint64(lower[b])) * _FNV_PRIME
                inside = True
            elif inside:
                out[j] = _finalize(h)
                j += 1
                h = _FNV_OFFSET
                inside = False
        if inside:
            out[j] = _finalize(h)
            j += 1
    return j


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _hash_each(data: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """The word hash of each string's bytes, as they are."""
    for i in range(len(offsets) - 1):
        h = _FNV_OFFSET
        for k in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[k])) * _FNV_PRIME
        out[i] = _finalize(h)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _interleave(first: np.ndarray, first_lengths: np.ndarray, second: np.ndarray,
                second_lengths: np.ndarray, take_second: np.ndarray, out: np.ndarray) -> None:
    """Row-major merge: row i's run comes from `second` where take_second[i], else from `first`."""
    a = 0
    b = 0
    j = 0
    for i in range(len(take_second)):
        if take_second[i]:
            for _ in range(second_lengths[i]):
                out[j] = second[b]
                b += 1
                j += 1
        else:
            for _ in range(first_lengths[i]):
                out[j] = first[a]
                a += 1
                j += 1


def string_buffers(values: Strings) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(offsets int64 of len+1, data uint8, the large_string array they view) of a string column.

    The offsets index `data` directly (the array's own offset is applied); null rows keep their
    offsets, so callers must read the array's null bitmap. Chunked input is combined first.
    """
    arr = values.to_arrow() if isinstance(values, pl.Series) else values
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.large_string())
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    if len(arr) == 0:
        return np.zeros(1, np.int64), np.empty(0, np.uint8), arr
    _, offsets_buffer, data_buffer = arr.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int64, len(arr) + 1, arr.offset * 8)
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    return offsets, data, arr


def _valid(arr: pa.Array) -> np.ndarray | None:
    """The row mask of non-null rows, or None when there are no nulls."""
    return arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None


def squash_ascii(values: Strings) -> tuple[pa.Array, np.ndarray]:
    """(squashed large_string array, non-ASCII row mask): ASCII rows lowercased with the ASCII
    whitespace (space, \\t-\\r, \\x1c-\\x1f) erased; non-ASCII rows are left empty for the caller to
    fill. Null rows stay null (and are never flagged)."""
    return _rewrite_ascii(values, lambda *bufs: _squash_ascii(bufs[0], bufs[1], _LOWER, _KEEP, *bufs[2:]))


def collapse_ascii_whitespace(values: Strings) -> tuple[pa.Array, np.ndarray]:
    """(collapsed large_string array, non-ASCII row mask): in ASCII rows every run of ASCII
    whitespace (space, \\t-\\r, \\x1c-\\x1f) becomes one space and none is left at either end
    (`schemas.pair.normalize_text` on ASCII text); non-ASCII rows are left empty for the caller to
    fill. Null rows stay null (and are never flagged)."""
    return _rewrite_ascii(values, lambda *bufs: _collapse_ascii(bufs[0], bufs[1], _SPACE, *bufs[2:]))


def _rewrite_ascii(values: Strings, kernel: Callable[..., int]) -> tuple[pa.Array, np.ndarray]:
    """Run a rewriting kernel `(data, offsets, out, out_offsets, non_ascii) -> bytes written` (its
    output never longer than its input) and wrap what it wrote as a large_string array."""
    offsets, data, arr = string_buffers(values)
    n = len(arr)
    out = np.empty(max(int(offsets[-1] - offsets[0]), 1), np.uint8)
    out_offsets = np.empty(n + 1, np.int64)
    non_ascii = np.empty(n, np.bool_)
    written = kernel(data, offsets, out, out_offsets, non_ascii)
    validity = None
    valid = _valid(arr)
    if valid is not None:
        non_ascii &= valid
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    result = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(out_offsets), pa.py_buffer(out[:written]), validity, arr.null_count)
    return result, non_ascii


def ascii_then(series: pl.Series, kernel: Callable[[Strings], tuple[pa.Array, np.ndarray]],
               fallback: Callable[[pl.Series], pl.Series]) -> pl.Series:
    """A string column through `kernel` (`squash_ascii`, `collapse_ascii_whitespace`), the rows it
    flags through `fallback` (the polars path), scattered back in place."""
    done, flagged = kernel(series)
    out = pl.Series(series.name, done, dtype=pl.String)
    if flagged.any():
        idx = pl.Series(np.flatnonzero(flagged), dtype=pl.UInt32)
        out = out.scatter(idx, fallback(series.gather(idx)))
    return out


def holds_any_byte(values: Strings, table: np.ndarray) -> bool:
    """Whether any string (nulls' bytes included, which are none) holds a byte marked in `table`
    (256 entries): one pass that stops at the first."""
    for chunk in (values.chunks if isinstance(values, pa.ChunkedArray) else [values]):
        offsets, data, _ = string_buffers(chunk)
        if len(data) and _any_of(data[int(offsets[0]) : int(offsets[-1])], table):
            return True
    return False


def ascii_word_hashes(values: Strings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(word hashes, words per row, non-ASCII row mask) for the lowercase `\\w+` words of each row.

    Only ASCII rows are tokenized; non-ASCII rows count 0 words and are flagged, null rows count 0.
    """
    offsets, data, arr = string_buffers(values)
    n = len(arr)
    counts = np.empty(n, np.int64)
    non_ascii = np.empty(n, np.bool_)
    valid = _valid(arr)
    total = _count_ascii_words(data, offsets, _WORD, counts, non_ascii)
    if valid is not None:
        non_ascii &= valid
        total -= int(counts[~valid].sum())
        counts[~valid] = 0
    hashes = np.empty(total, np.uint64)
    _hash_ascii_words(data, offsets, _LOWER, _WORD, counts, hashes)
    return hashes, counts, non_ascii


def hash_strings(values: Strings) -> np.ndarray:
    """The word hash of each string's UTF-8 bytes (null rows hash as the empty string)."""
    offsets, data, arr = string_buffers(values)
    out = np.empty(len(arr), np.uint64)
    _hash_each(data, offsets, out)
    return out


def word_hash(word: str) -> int:
    """The word hash of one string (as the kernels compute it)."""
    return int(hash_strings(pa.array([word], pa.large_string()))[0])


def interleave(first: np.ndarray, first_lengths: np.ndarray, second: np.ndarray,
               second_lengths: np.ndarray, take_second: np.ndarray) -> np.ndarray:
    """Merge two row-major runs of values: row i from `second` where take_second[i], else `first`."""
    total = int(np.where(take_second, second_lengths, first_lengths).sum())
    out = np.empty(total, first.dtype)
    _interleave(first, first_lengths, second, second_lengths, take_second, out)
    return out
