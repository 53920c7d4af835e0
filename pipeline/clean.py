"""Cleaning the pool: exact dedup on a strong normalization, and 13-gram benchmark decontamination.

Both are stages of the one contract (pipeline/stage.py): decontamination is a `PoolFilter` over
pool partitions, exact dedup a `GlobalStep` shuffled by its key's hash, so memory stays bounded
by a partition (a bucket for the reduce) and an executor in flows/ can run them on many workers.
The text work is column-wise in polars/numpy; every removed pair is a row of `dropped` with its
reason; the pool itself is never rewritten. Both are idempotent: a re-run finds nothing new.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from pipeline import ngrams, text_kernels
from pipeline.pool import DroppedLookup
from pipeline.sources import iter_benchmark_prompts
from pipeline.stage import GlobalStep, PoolFilter, StageStats, run_local
from pipeline.store import Workspace

BATCH_ROWS = 100_000
DEDUP_STAGE = "exact-dedup"
DECONTAMINATION_STAGE = "decontamination"
_NON_SPACE_WHITESPACE = (r"[\t\n\x0b-\r\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
                         r"\x{202f}\x{205f}\x{3000}]")
_DEDUP_DETAIL = '{"key": "conversation, chosen, rejected; case, width and whitespace ignored"}'

Progress = Callable[[int, int], None]
"""Called with (pool rows examined so far, pool rows in all) after every batch or partition."""


CleanStats = StageStats
"""The stats record of every cleaning stage (the image steps in pipeline/clean_images.py too)."""


def squash(series: pl.Series) -> pl.Series:
    """Text with case, Unicode width/compatibility forms and every whitespace character erased.

    ASCII rows are squashed by a numba kernel straight from the Arrow buffers; rows with any
    non-ASCII character take the polars path (NFKC, Unicode lowercase and whitespace) and are
    scattered back.
    """
    if series.dtype != pl.String or series.len() == 0:
        return _squash_polars(series)
    return text_kernels.ascii_then(series, text_kernels.squash_ascii, _squash_polars)


def _squash_polars(series: pl.Series) -> pl.Series:
    """`squash` by polars alone (the path of non-ASCII rows)."""
    # a row is ASCII when its UTF-8 bytes are its characters: two length reads, no regex scan
    non_ascii = series.str.len_bytes() != series.str.len_chars()
    if non_ascii.any():  # NFKC is costly; ASCII rows are already in NFKC
        idx = non_ascii.arg_true()
        series = series.scatter(idx, series.gather(idx).str.normalize("NFKC"))
    # rare whitespace by regex, then plain spaces literally: a regex matching every space is slow
    series = series.str.to_lowercase().str.replace_all(_NON_SPACE_WHITESPACE, "")
    return series.str.replace_all(" ", "", literal=True)


def strong_keys(batch: pl.DataFrame) -> pl.Series:
    """Per row: (conversation with roles, chosen, rejected), squashed, as one string.

    Stronger than pair_id's normalization: pairs that differ only in case or spacing (HH-RLHF has
    them) collapse to one key.
    """
    flat = (batch.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"), "conversation")
            .explode("conversation").unnest("conversation"))
    turn = flat["role"] + "\x1f" + squash(flat["content"])
    if "images" in flat.columns and flat["images"].list.len().fill_null(0).gt(0).any():
        # image turns add their hashes (as pair_id does): pairs differing only by an image differ
        keys = flat.select(pl.col("images").list.eval(pl.coalesce(
            pl.element().struct.field("sha256"), pl.lit("uri:") + pl.element().struct.field("uri")
        )).list.join(",").fill_null(""))["images"]
        turn = pl.select(pl.when(keys == "").then(turn).otherwise(turn + "\x1c" + keys)).to_series()
    turns = pl.DataFrame({"row": flat["row"], "turn": turn})
    conversation = turns.group_by("row", maintain_order=True).agg(pl.col("turn").str.join("\x1e"))
    conversation = conversation.sort("row")["turn"]
    return conversation + "\x1d" + squash(batch["chosen"]) + "\x1d" + squash(batch["rejected"])


class ExactDedup(GlobalStep):
    """Exact duplicates by strong key: shuffled by the key's hash, one reduce per bucket; in a
    bucket the pair with the lowest (ingest_seq, pair_id) of each key is kept."""

    name = DEDUP_STAGE
    reads = ("pair_id", "conversation", "chosen", "rejected", "ingest_seq")

    def __init__(self, buckets: int = 0) -> None:
        self.buckets = buckets

    def keys(self, batch: pl.DataFrame) -> pl.DataFrame:
        text = strong_keys(batch)
        h1 = text.hash(seed=1)
        return batch.select("pair_id", "ingest_seq").with_columns(h1=h1, h2=text.hash(seed=2), bucket_hash=h1)

    def reduce(self, rows: pl.DataFrame) -> pl.DataFrame:
        frame = rows.sort("ingest_seq", "pair_id")
        frame = frame.with_columns(kept_pair_id=pl.col("pair_id").first().over("h1", "h2"))
        return frame.filter(pl.col("pair_id") != pl.col("kept_pair_id")).select(
            "pair_id", pl.lit("exact-duplicate").alias("reason"), "kept_pair_id",
            pl.lit(1.0).alias("similarity"), pl.lit(_DEDUP_DETAIL).alias("detail"))


def exact_dedup(
    ws: Workspace, *, batch_rows: int = BATCH_ROWS, progress: Progress | None = None
) -> CleanStats:
    """Drop every active pair whose strong key repeats one seen earlier (lower ingest_seq wins)."""
    return run_local(ws, ExactDedup(), rows_per_partition=batch_rows, progress=progress)


@dataclass
class BenchmarkIndex:
    """Every n-gram of every benchmark's first user turns, and which item it came from."""

    n: int
    hashes: pl.Series
    item_of: dict[int, int]
    items: list[tuple[str, str, list[str]]]

    _windows: dict[int, set[tuple[str, ...]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def windows_of(self, item: int) -> set[tuple[str, ...]]:
        """The item's n-word windows as tuples (built on first use: only matched items need them)."""
        if item not in self._windows:
            self._windows[item] = set(ngrams.window_words(self.items[item][2], self.n))
        return self._windows[item]


def build_benchmark_index(
    benchmark_paths: Sequence[str], *, n: int = 13, format: str = "auto"
) -> BenchmarkIndex:
    """Read each benchmark (any supported format) and hash the n-grams of its first user turns."""
    items: list[tuple[str, str, list[str]]] = []
    prompts: list[str] = []
    for path in benchmark_paths:
        for item_id, prompt in iter_benchmark_prompts(str(path), format=format):
            items.append((str(path), item_id, []))
            prompts.append(prompt)
    frame = pl.DataFrame({"t": prompts}, schema={"t": pl.Utf8})
    word_lists = frame.select(ngrams.words_expr(pl.col("t")))["t"]
    for i, wl in enumerate(word_lists.to_list()):
        items[i][2].extend(wl or [])
    hashes, rows = ngrams.window_hashes(ngrams.word_hashes(frame["t"]), n)
    item_of: dict[int, int] = {}
    for h, r in zip(hashes.tolist(), rows.tolist(), strict=True):
        item_of.setdefault(h, r)
    return BenchmarkIndex(n, pl.Series("h", np.unique(hashes), dtype=pl.UInt64), item_of, items)


class Decontamination(PoolFilter):
    """Pairs whose conversation shares an n-word window with a benchmark's first user turn."""

    name = DECONTAMINATION_STAGE
    reads = ("pair_id", "conversation")

    def __init__(self, benchmark_paths: Sequence[str], n: int = 13,
                 index: BenchmarkIndex | None = None) -> None:
        self.benchmark_paths, self.n, self._index = [str(p) for p in benchmark_paths], n, index

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None}  # workers build their own index: no big pickles

    @property
    def index(self) -> BenchmarkIndex:
        if self._index is None:
            self._index = build_benchmark_index(self.benchmark_paths, n=self.n)
        return self._index

    def stats_detail(self) -> dict[str, int]:
        return {"benchmark_items": len(self.index), "benchmark_ngrams": self.index.hashes.len()}

    def decide(self, batch: pl.DataFrame) -> pl.DataFrame:
        index = self.index
        empty = pl.DataFrame(schema={"pair_id": pl.Utf8, "reason": pl.Utf8, "detail": pl.Utf8})
        if index.hashes.len() == 0:
            return empty
        if batch.height == 0:
            return empty
        # a row's text is its contents joined by "\n", a non-word character: its words are the
        # words of each content in turn, so the contents are tokenized one by one, unjoined (a
        # null or empty conversation explodes to one null content, which has no words)
        contents = batch["conversation"].list.eval(pl.element().struct.field("content"))
        per_row = np.maximum(contents.list.len().fill_null(0).to_numpy().astype(np.int64), 1)
        content_words = ngrams.word_hashes(contents.explode(empty_as_null=True, keep_nulls=True))
        lengths = np.add.reduceat(content_words.lengths, np.cumsum(per_row) - per_row)
        hashes, rows = ngrams.window_hashes(ngrams.WordHashes(content_words.hashes, lengths), index.n)
        hit = pl.Series(hashes, dtype=pl.UInt64).is_in(index.hashes.implode()).to_numpy()
        if not hit.any():
            return empty
        # the windows of row r start at position row_start[r] in `hashes`
        row_start = np.searchsorted(rows, np.arange(batch.height))
        matched: dict[int, list[tuple[int, int]]] = {}
        for pos in np.flatnonzero(hit).tolist():
            r = int(rows[pos])
            matched.setdefault(r, []).append((pos - int(row_start[r]), int(hashes[pos])))
        hit_rows = list(matched)
        word_lists = batch[hit_rows].select(
            ngrams.words_expr(pl.col("conversation").list.eval(pl.element().struct.field("content"))
                              .list.join("\n"))
        ).to_series().to_list()
        records = [rec for r, pair_words in zip(hit_rows, word_lists, strict=True)
                   if (rec := _verified_match(index, batch["pair_id"][r], pair_words or [], matched[r]))]
        return pl.DataFrame(records, schema=empty.schema) if records else empty


def decontaminate(
    ws: Workspace, benchmark_paths: Sequence[str], n: int = 13, *, batch_rows: int = BATCH_ROWS,
    index: BenchmarkIndex | None = None, progress: Progress | None = None,
) -> CleanStats:
    """Drop every active pair whose conversation shares an n-word window with a benchmark's first user turn.

    The dropped row's detail names the benchmark file, the item and the shared words. Responses
    are not searched: contamination is about prompts a benchmark will ask.
    """
    step = Decontamination(benchmark_paths, n, index)
    if step.index.hashes.len() == 0:
        return CleanStats(DECONTAMINATION_STAGE, detail=step.stats_detail())
    return run_local(ws, step, rows_per_partition=batch_rows, progress=progress)


def _verified_match(index: BenchmarkIndex, pair_id: str, pair_words: list[str],
                    windows: list[tuple[int, int]]) -> dict[str, object] | None:
    """The first hash hit whose words really (word for word) occur in the benchmark item it points to."""
    for start, h in windows:
        window = tuple(pair_words[start : start + index.n])
        item = index.item_of[h]
        if window in index.windows_of(item):
            bench_file, item_id, _ = index.items[item]
            detail = {"benchmark": bench_file, "item": item_id, "ngram": " ".join(window)}
            return {"pair_id": pair_id, "reason": "benchmark-overlap",
                    "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True)}
    return None


def _active_batches(ws: Workspace, columns: list[str], batch_rows: int,
                    progress: Progress | None = None) -> Iterator[pl.DataFrame]:
    """The active pool in batches of the given columns (pairs already in `dropped` left out).

    `progress` hears of a batch once the caller has asked for the next one (its work is done).
    """
    if not ws.has_table("pool"):
        return
    total, done = ws.row_count("pool"), 0
    if progress is not None:
        progress(0, total)
    lookup = DroppedLookup.open(ws)  # each batch reads only the dropped keys of its own ids' buckets
    for table in ws.iter_batches("pool", batch_rows=batch_rows, columns=columns):
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        gone = lookup.gone(frame["pair_id"])
        if gone.height:
            frame = frame.join(gone, on="pair_id", how="anti")
        if frame.height:
            yield frame
        done += table.num_rows
        if progress is not None:
            progress(done, total)
