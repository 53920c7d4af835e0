"""Word n-grams as 64-bit hashes, computed column-wise (a numba kernel or polars tokenizes, numpy
rolls the windows).

Used by decontamination: a text is lowercased and split into `\\w+` words; every window of n
consecutive words becomes one hash. ASCII rows are tokenized and hashed by `text_kernels` straight
from the Arrow buffers; other rows by polars (`words_expr`), their words then hashed by the same
word hash, so a word hashes alike whichever path read it. Hashes are only compared within one
process, never stored.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl

from pipeline import text_kernels

WORD = r"\w+"
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_INVERSE = np.uint64(pow(0x9E3779B97F4A7C15, -1, 2**64))


def words_expr(text: pl.Expr) -> pl.Expr:
    """The list of lowercase words of a text column."""
    return text.str.to_lowercase().str.extract_all(WORD)


def words(text: str) -> list[str]:
    """The same tokenization for one string."""
    frame = pl.DataFrame({"t": [text]}).select(words_expr(pl.col("t")))
    return frame["t"][0].to_list() or []


class WordHashes(NamedTuple):
    """Every word of every row as its word hash, rows one after another, and words per row."""

    hashes: np.ndarray  # uint64
    lengths: np.ndarray  # int64, one per row


def word_hashes(texts: pl.Series) -> WordHashes:
    """The hashes of the words `words_expr` gives each row of a string column, in the same order.

    ASCII rows go through the numba tokenizer; the rest are tokenized by `words_expr` and their
    words hashed by the same word hash. Null rows have no words.
    """
    hashes, lengths, non_ascii = text_kernels.ascii_word_hashes(texts)
    if not non_ascii.any():
        return WordHashes(hashes, lengths)
    rows = np.flatnonzero(non_ascii)
    slow = list_word_hashes(texts.gather(rows).to_frame("t").select(words_expr(pl.col("t")))["t"])
    slow_lengths = np.zeros(len(lengths), np.int64)
    slow_lengths[rows] = slow.lengths
    merged = text_kernels.interleave(hashes, lengths, slow.hashes, slow_lengths, non_ascii)
    return WordHashes(merged, np.where(non_ascii, slow_lengths, lengths))


def list_word_hashes(word_lists: pl.Series) -> WordHashes:
    """The word hash of every word of a column of word lists (null lists have no words)."""
    lengths = word_lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    return WordHashes(text_kernels.hash_strings(word_lists.explode().drop_nulls()), lengths)


def window_hashes(words: WordHashes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, row) for every n-word window of every row (`word_hashes` of a text column, or
    `list_word_hashes` of a column of word lists); rows shorter than n have none."""
    hashed, lengths = words
    if len(hashed) == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    windows = np.maximum(lengths - n + 1, 0)
    total = int(windows.sum())
    if total == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    row = np.repeat(np.arange(len(lengths)), windows)
    first = np.arange(total) - np.repeat(np.cumsum(windows) - windows, windows) + starts[row]
    return _polynomial_windows(hashed, first, n), row


def _polynomial_windows(hashed: np.ndarray, first: np.ndarray, n: int) -> np.ndarray:
    """sum(h[i+k] * M**(n-1-k)) mod 2**64 for every window start i, in a constant number of passes.

    Prefix sums of h[t] * M**-t (M is odd, so invertible mod 2**64) give each window's sum at
    once; multiplying by M**(i+n-1) puts it in the Horner form `window_hashes_reference` computes.
    """
    m = len(hashed)
    with np.errstate(over="ignore"):
        inverse_powers = np.empty(m, np.uint64)
        inverse_powers[0] = 1
        inverse_powers[1:] = np.cumprod(np.full(m - 1, _INVERSE, np.uint64))
        prefix = np.zeros(m + 1, np.uint64)
        np.cumsum(hashed * inverse_powers, out=prefix[1:])
        powers = np.empty(m + 1, np.uint64)
        powers[0] = 1
        powers[1:] = np.cumprod(np.full(m, _MULTIPLIER, np.uint64))
        return (prefix[first + n] - prefix[first]) * powers[first + n - 1]


def window_hashes_reference(hashed: np.ndarray, first: np.ndarray, n: int) -> np.ndarray:
    """The same hashes by Horner's rule, n passes (kept to test the fast form against)."""
    acc = np.zeros(len(first), np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _MULTIPLIER + hashed[first + k]
    return acc


def window_words(word_list: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(word_list[i : i + n]) for i in range(len(word_list) - n + 1)]
