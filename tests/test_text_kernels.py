"""The numba text kernels against the polars paths they replace: squash, words, n-gram windows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from pipeline import ngrams, text_kernels
from pipeline.clean import Decontamination, _squash_polars, build_benchmark_index, squash

TRICKY = [
    "Hello World", "  lead and trail  ", "tab\there", "line\nfeed", "vt\x0bff\x0ccr\rend",
    "seps\x1cfs\x1dgs\x1ers\x1fus", "nul\x00byte", "NBSP\u00a0here", "ideographic\u3000space",
    "ＦＵＬＬ　ｗｉｄｔｈ", "ÉCOLE Ça ÀÖ", "emoji 😀 Party🎉", "", "MiXeD_case_123 under_score",
    "next\u0085line", "para\u2029sep line\u2028sep", "thin\u2009space\u200anarrow\u202fmath\u205f",
    "ogham\u1680space", "Kelvin \u212a sign", "İstanbul", "ΣΟΦΟΣ σοφός", "e\u0301 combining",
    "ﬁ ligature", "ＡＢＣ123", "punct!?,.;:'\"-()[]{}", "ascii only, PLAIN sentence.",
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f ", "x", "ß STRASSE", "tab\t\tTAB", "ümlaut_word über",
]
ASCII = list("abcxyzABCXYZ0189_ .,!-'\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x00")
NON_ASCII = ["\u00a0", "\u3000", "Ａ", "ｚ", "É", "ç", "😀", "\u0085", "\u2028", "\u212a", "İ", "Σ",
             "\u0301", "ﬁ", "ß", "中", "文"]


def random_strings(count: int, seed: int = 0) -> list[str | None]:
    rng = random.Random(seed)
    out: list[str | None] = []
    for i in range(count):
        if i % 97 == 0:
            out.append(None)
            continue
        # most rows ASCII (as in the pool), the rest with a few non-ASCII characters
        pool = ASCII if rng.random() < 0.7 else ASCII + NON_ASCII
        out.append("".join(rng.choice(pool) for _ in range(rng.randrange(0, 40))))
    return out


def cases() -> list[pl.Series]:
    tricky = pl.Series("t", [*TRICKY, None, *TRICKY[:5], None])
    rand = pl.Series("r", random_strings(3000))
    chunked = pl.concat([pl.Series("c", TRICKY[:10]), pl.Series("c", [None, *TRICKY[10:]])], rechunk=False)
    assert chunked.n_chunks() == 2
    return [tricky, rand, tricky.slice(3, 20), rand.slice(1001, 700), chunked,
            pl.Series("e", [], dtype=pl.String), pl.Series("n", [None, None], dtype=pl.String),
            pl.Series("a", ["ONLY ascii", "rows"])]


def ids(series: pl.Series) -> str:
    return f"{series.name}-{series.len()}"


@pytest.mark.parametrize("series", cases(), ids=ids)
def test_squash_equals_polars_path(series: pl.Series) -> None:
    fast, slow = squash(series), _squash_polars(series)
    assert fast.dtype == pl.String and fast.name == series.name
    assert fast.to_list() == slow.to_list()


def test_squash_kernel_reads_arrow_offsets_nulls_and_chunks() -> None:
    values = pa.array([None, "A b", "x\u00a0y", "Tab\tC", None, "Q"], pa.large_string()).slice(1, 4)
    out, non_ascii = text_kernels.squash_ascii(values)
    assert out.to_pylist() == ["ab", "", "tabc", None]
    assert non_ascii.tolist() == [False, True, False, False]
    chunked = pa.chunked_array([pa.array(["A B"], pa.string()), pa.array([None, "C\nD"], pa.string())])
    out, non_ascii = text_kernels.squash_ascii(chunked)
    assert out.to_pylist() == ["ab", None, "cd"] and not non_ascii.any()
    out, non_ascii = text_kernels.squash_ascii(pa.chunked_array([], pa.large_string()))
    assert len(out) == 0 and len(non_ascii) == 0


def _reference_word_hashes(series: pl.Series) -> list[list[int]]:
    """Per row, the word hash of each word of `words_expr`'s list, in list order."""
    lists = series.to_frame("t").select(ngrams.words_expr(pl.col("t")))["t"].to_list()
    return [[text_kernels.word_hash(w) for w in (words or [])] for words in lists]


@pytest.mark.parametrize("series", cases(), ids=ids)
def test_word_hashes_follow_words_expr_word_for_word(series: pl.Series) -> None:
    got = ngrams.word_hashes(series)
    assert got.hashes.dtype == np.uint64 and got.lengths.dtype == np.int64
    starts = np.cumsum(got.lengths) - got.lengths
    per_row = [got.hashes[s : s + n].tolist() for s, n in zip(starts, got.lengths, strict=True)]
    assert per_row == _reference_word_hashes(series)


@pytest.mark.parametrize("n", [1, 3, 13])
def test_window_hashes_equal_horner_over_words_expr(n: int) -> None:
    series = pl.Series("t", [*random_strings(2000, seed=1), *TRICKY, " ".join(TRICKY) * 3])
    hashes, rows = ngrams.window_hashes(ngrams.word_hashes(series), n)
    expect_hashes: list[int] = []
    expect_rows: list[int] = []
    for r, words in enumerate(_reference_word_hashes(series)):
        if len(words) >= n:
            first = np.arange(len(words) - n + 1)
            expect_hashes += ngrams.window_hashes_reference(np.array(words, np.uint64), first, n).tolist()
            expect_rows += [r] * len(first)
    assert hashes.tolist() == expect_hashes and rows.tolist() == expect_rows
    # a column of word lists hashes its words the same way
    lists = series.to_frame("t").select(ngrams.words_expr(pl.col("t")))["t"]
    from_lists = ngrams.window_hashes(ngrams.list_word_hashes(lists), n)
    assert from_lists[0].tolist() == expect_hashes and from_lists[1].tolist() == expect_rows


def test_word_hash_is_fnv1a_then_splitmix() -> None:
    def reference(data: bytes) -> int:
        mask = 2**64 - 1
        h = 0xCBF29CE484222325
        for b in data:
            h = ((h ^ b) * 0x100000001B3) & mask
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        return h ^ (h >> 31)

    for word in ["", "a", "hello", "émoji", "中文", "under_score9"]:
        assert text_kernels.word_hash(word) == reference(word.encode())


THIRTEEN = "one two three four five six seven eight nine ten eleven twelve thirteen"


def test_decide_reads_joined_contents_and_verifies_positions(tmp_path: Path) -> None:
    bench = tmp_path / "bench.jsonl"
    item = {"prompt": f"Über: {THIRTEEN.upper()} done", "chosen": "x", "rejected": "y"}
    bench.write_text(json.dumps(item) + "\n")
    step = Decontamination([str(bench)], index=build_benchmark_index([str(bench)]))

    def turn(content: str | None) -> dict[str, str | None]:
        return {"role": "user", "content": content}

    words = THIRTEEN.split()
    conversations = [
        [turn("Ça va? " + THIRTEEN)],  # non-ASCII row
        [turn("nothing here")],
        [turn(" ".join(words[:6])), turn(None), turn(" ".join(words[6:]).title())],  # across turns
        [],
        None,
        [turn("zzz"), turn("ß\u00a0" + " ".join(words[:12])), turn("Thirteen!")],
        [turn(None)],
        [turn("one two three four five six seven eight nine ten eleven twelve")],
    ]
    turns = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    batch = pl.DataFrame({"pair_id": [f"p{i}" for i in range(len(conversations))],
                          "conversation": conversations},
                         schema={"pair_id": pl.String, "conversation": turns})
    out = step.decide(batch)
    assert out["pair_id"].to_list() == ["p0", "p2", "p5"]
    assert {json.loads(d)["ngram"] for d in out["detail"]} == {THIRTEEN}


def test_collapsed_whitespace_equals_the_polars_normalization() -> None:
    from pipeline.sources.fast_jsonl import normalized, normalized_text

    values = TRICKY + random_strings(3000, seed=7) + [None, " ", "  a  ", "\t\t", "a\x1cb", "\x1f"]
    series = pl.Series("t", values)
    reference = series.to_frame().select(normalized(pl.col("t"))).to_series()
    assert normalized_text(series).to_list() == reference.to_list()
    assert normalized_text(series[40:90]).to_list() == reference[40:90].to_list()  # a slice's offset
    chunked = pl.concat([series[:500], series[500:]], rechunk=False)
    assert normalized_text(chunked).to_list() == reference.to_list()


def test_the_escape_check_finds_each_byte_json_escapes_and_nothing_else() -> None:
    from pipeline.sources.fast_jsonl import _needs_escape

    def needs(*chunks: list[str | None]) -> bool:
        return _needs_escape(pa.chunked_array([pa.array(c, pa.string()) for c in chunks]))

    assert not needs(["plain text", None, ""], ["Ünïcode ok 😀", "tab-free"])
    for escaped in ['a "quote"', "back\\slash", "new\nline", "nul\x00", "\x1f"]:
        assert needs(["clean"], ["also clean", escaped]), escaped
    assert not needs([]) and not needs([None])
