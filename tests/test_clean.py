"""Exact dedup and 13-gram decontamination, on constructed cases and on the real data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl

from pipeline.clean import build_benchmark_index, decontaminate, exact_dedup, squash
from pipeline.ingest import ingest_source
from pipeline.ngrams import window_words, words
from pipeline.pool import active_pool
from pipeline.sources import SourceSpec
from pipeline.store import Workspace

THIRTEEN = "one two three four five six seven eight nine ten eleven twelve thirteen"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pool_of(tmp_path: Path, rows: list[dict], name: str = "src") -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(write_jsonl(tmp_path / f"{name}.jsonl", rows)), name=name))
    return ws


def dropped(ws: Workspace, stage: str) -> pl.DataFrame:
    return pl.from_arrow(ws.read("dropped")).filter(pl.col("stage") == stage)


def test_squash_erases_case_width_and_whitespace() -> None:
    out = squash(pl.Series(["Hello\u00a0 World\t!", "ＦＵＬＬ width", "a\u3000b\nc"])).to_list()
    assert out == ["helloworld!", "fullwidth", "abc"]


def test_exact_dedup_drops_case_and_spacing_variants_keeping_the_first(tmp_path: Path) -> None:
    rows = [
        {"prompt": "How do I boil an egg?", "chosen": "Put it in water.", "rejected": "Fry it."},
        {"prompt": "HOW do i boil an  egg?", "chosen": "put it in water .", "rejected": "fry it."},
        {"prompt": "How do I boil an egg?", "chosen": "Put it in\nwater.", "rejected": "Fry  it."},
        {"prompt": "How do I boil an egg?", "chosen": "Fry it.", "rejected": "Put it in water."},
        {"prompt": "ＨＯＷ do I boil an egg?", "chosen": "Put it in water.", "rejected": "Fry it."},
        {"prompt": "Another question", "chosen": "a", "rejected": "b"},
    ]
    ws = pool_of(tmp_path, rows)
    # row 3 differs only in whitespace: the same pair_id, so a duplicate already at ingest
    assert ws.row_count("pool") == 5
    pool = pl.from_arrow(ws.read("pool")).sort("ingest_seq")
    stats = exact_dedup(ws)
    assert (stats.examined, stats.dropped) == (5, 2)
    dups = dropped(ws, "exact-dedup").sort("pair_id")
    first = pool["pair_id"][0]
    assert set(dups["kept_pair_id"]) == {first}
    # a pair with swapped labels is not a duplicate
    assert set(dups["pair_id"]) == {pool["pair_id"][1], pool["pair_id"][3]}
    assert set(dups["reason"]) == {"exact-duplicate"}
    assert active_pool(ws).select(pl.len()).collect().item() == 3
    again = exact_dedup(ws)
    assert (again.examined, again.dropped) == (3, 0)


def test_exact_dedup_keeps_turn_structure(tmp_path: Path) -> None:
    rows = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "there"},
                           {"from": "human", "value": "ok"}], "chosen": "a", "rejected": "b"},
        {"conversations": [{"from": "human", "value": "hi there"}, {"from": "gpt", "value": "ok"},
                           {"from": "human", "value": "x"}], "chosen": "a", "rejected": "b"},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "THERE"},
                           {"from": "human", "value": "ok"}], "chosen": "A", "rejected": "b"},
    ]
    ws = pool_of(tmp_path, rows)
    assert exact_dedup(ws).dropped == 1
    assert dropped(ws, "exact-dedup")["pair_id"].to_list() == [
        pl.from_arrow(ws.read("pool")).sort("ingest_seq")["pair_id"][2]]


def test_decontamination_finds_a_13_gram_in_any_turn(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([
        {"input": f"Please, {THIRTEEN.upper()} and more.", "output_1": "x", "output_2": "y", "label": 1},
        {"input": "short prompt", "output_1": "x", "output_2": "x", "label": 1},
    ]))
    twelve = " ".join(THIRTEEN.split()[:12])
    rows = [
        {"prompt": f"Intro: {THIRTEEN}!", "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "first turn"}, {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": f"then {THIRTEEN.replace(' ', ',  ')}"}],
         "chosen": "a", "rejected": "b"},
        {"prompt": f"{twelve} only", "chosen": "a", "rejected": "b"},
        {"prompt": "clean", "chosen": f"response quoting {THIRTEEN}", "rejected": "b"},
        {"prompt": "short prompt", "chosen": "a", "rejected": "b"},
    ]
    ws = pool_of(tmp_path, rows)
    stats = decontaminate(ws, [str(bench)])
    assert (stats.examined, stats.dropped) == (5, 2)
    assert stats.detail == {"benchmark_items": 2, "benchmark_ngrams": 4}  # 16 words: 4 windows
    pool = pl.from_arrow(ws.read("pool")).sort("ingest_seq")
    hits = dropped(ws, "decontamination").sort("pair_id")
    assert set(hits["pair_id"]) == {pool["pair_id"][0], pool["pair_id"][1]}
    detail = json.loads(hits["detail"][0])
    assert detail == {"benchmark": str(bench), "item": "bench.json:1", "ngram": THIRTEEN}
    assert set(hits["reason"]) == {"benchmark-overlap"}
    again = decontaminate(ws, [str(bench)])
    assert (again.examined, again.dropped) == (3, 0)


def test_benchmarks_in_any_supported_format(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "b.jsonl", [{"prompt": THIRTEEN, "chosen": "a", "rejected": "b"}])
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": f"\n\nHuman: {THIRTEEN} x\n\nAssistant: a",
                                             "rejected": f"\n\nHuman: {THIRTEEN} x\n\nAssistant: b"}])
    index = build_benchmark_index([str(jsonl), str(hh)])
    assert len(index) == 2
    assert [item[1] for item in index.items] == ["b.jsonl:1", "hh.jsonl:1"]
    assert index.hashes.len() == 2  # 13 words make one window, 14 words two, one of them shared
    assert build_benchmark_index([str(jsonl)], n=5).hashes.len() == 9


def test_llmbar_as_benchmark_against_a_pool_that_contains_it(shared_raw: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(shared_raw / "llmbar" / "Dataset")))
    ingest_source(ws, SourceSpec(str(shared_raw / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")))
    assert exact_dedup(ws).dropped == 0
    natural = shared_raw / "llmbar" / "Dataset" / "LLMBar" / "Natural" / "dataset.json"
    stats = decontaminate(ws, [str(natural)])
    assert (stats.examined, stats.dropped) == (878 + 2308, 79)
    items = json.loads(natural.read_text())
    long_enough = [i for i in items if len(words(i["input"])) >= 13]
    assert len(long_enough) == 72
    hits = dropped(ws, "decontamination").join(pl.from_arrow(ws.read("pool")), on="pair_id")
    subsets = Counter(json.loads(m)["subset"] for m in hits["meta"])
    # every Natural item long enough to hold a 13-gram, plus prompts other subsets share with it
    assert subsets == {"LLMBar/Natural": 72, "Processed/MT-Bench": 5, "Processed/FairEval": 1,
                       "Processed/LLMEval^2": 1}
    for row in hits.iter_rows(named=True):
        detail = json.loads(row["detail"])
        item = items[int(detail["item"].rsplit(":", 1)[1]) - 1]
        gram = tuple(detail["ngram"].split())
        assert gram in window_words(words(item["input"]), 13)
        text = "\n".join(m["content"] for m in row["conversation"])
        assert gram in window_words(words(text), 13)
    assert set(hits["source"]) == {"Dataset"}


def test_window_hashes_match_horner_rule() -> None:
    import numpy as np

    from pipeline.ngrams import _polynomial_windows, list_word_hashes, window_hashes, window_hashes_reference

    rng = np.random.default_rng(0)
    hashed = rng.integers(0, 2**63, size=5000, dtype=np.uint64) * np.uint64(3)
    first = np.sort(rng.choice(5000 - 13, size=700, replace=False))
    assert (_polynomial_windows(hashed, first, 13) == window_hashes_reference(hashed, first, 13)).all()
    lists = pl.Series([["a", "b", "c", "d"], [], None, ["x", "b", "c", "d"], ["a", "b", "c"]])
    hashes, rows = window_hashes(list_word_hashes(lists), 3)
    assert rows.tolist() == [0, 0, 3, 3, 4]
    assert hashes[1] == hashes[3] and hashes[0] == hashes[4] and hashes[0] != hashes[2]


def test_dedup_and_decontamination_report_progress_per_batch(tmp_path: Path) -> None:
    rows = [{"prompt": f"Question number {i}?", "chosen": "yes", "rejected": "no"} for i in range(25)]
    rows += [{"prompt": "question NUMBER 3?", "chosen": "Yes", "rejected": "No"},
             {"prompt": f"Quote: {THIRTEEN} end", "chosen": "a", "rejected": "b"}]
    ws = pool_of(tmp_path, rows)
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"prompt": THIRTEEN, "chosen": "x", "rejected": "y"}])
    calls: list[tuple[int, int]] = []
    stats = exact_dedup(ws, batch_rows=10, progress=lambda done, total: calls.append((done, total)))
    assert stats.dropped == 1
    assert calls == [(0, 27), (10, 27), (20, 27), (27, 27)]
    calls.clear()
    stats = decontaminate(ws, [str(bench)], batch_rows=10,
                          progress=lambda done, total: calls.append((done, total)))
    assert stats.dropped == 1
    assert calls == [(0, 27), (10, 27), (20, 27), (27, 27)]  # pool rows, dropped ones included
