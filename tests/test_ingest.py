"""Ingest into the workspace: idempotent re-ingest, ingest_seq, duplicates across sources, rollback."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from pipeline.ingest import duplicate_row_id, ingest_source, prefetched
from pipeline.pool import active_pool, dropped_ids, load_records
from pipeline.sources import SourceReadError, SourceSpec
from pipeline.store import Workspace
from schemas.config.sources import SourceConfig
from schemas.pair import DROPPED_SCHEMA

HH = ["harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def snapshot(ws: Workspace) -> dict[str, int]:
    return {t: ws.row_count(t) for t in ("pool", "quarantine", "dropped")}


def test_hh_rlhf_into_one_pool_exact_counts_and_reingest_adds_nothing(
    shared_raw: Path, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path / "ws")
    first = [ingest_source(ws, SourceConfig(path=str(shared_raw / "hh-rlhf" / s / "test.jsonl.gz"),
                                            name=f"hh/{s}", license="MIT")) for s in HH]
    assert [s.rows_read for s in first] == [2312, 2354, 1137, 2749]
    assert [s.added for s in first] == [2308, 2348, 1132, 2717]
    assert [s.quarantined for s in first] == [4, 6, 5, 32]
    assert [s.duplicates for s in first] == [0, 0, 0, 0]
    assert snapshot(ws) == {"pool": 8505, "quarantine": 47, "dropped": 0}
    seqs = ws.read("pool", columns=["ingest_seq"]).column("ingest_seq").to_pylist()
    assert seqs == list(range(8505))
    again = [ingest_source(ws, SourceConfig(path=str(shared_raw / "hh-rlhf" / s / "test.jsonl.gz"),
                                            name=f"hh/{s}", license="MIT")) for s in HH]
    assert [s.added for s in again] == [0, 0, 0, 0]
    assert [s.already_present for s in again] == [2308, 2348, 1132, 2717]
    assert snapshot(ws) == {"pool": 8505, "quarantine": 47, "dropped": 0}
    counts = active_pool(ws).group_by("source").len().collect()
    assert dict(counts.iter_rows()) == {"hh/harmless-base": 2308, "hh/helpful-base": 2348,
                                        "hh/helpful-online": 1132, "hh/helpful-rejection-sampled": 2717}


def test_pandalm_duplicates_and_ties_recorded(shared_raw: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, SourceSpec(str(shared_raw / "pandalm" / "testset-v1.json")))
    got = (stats.rows_read, stats.added, stats.duplicates, stats.quarantined, stats.dropped)
    assert got == (999, 760, 76, 60, 103)
    dropped = pl.from_arrow(ws.read("dropped"))
    by_reason = dict(dropped.group_by("reason").len().iter_rows())
    assert by_reason == {"exact-duplicate": 76, "tie": 103}  # one per tie row (79 distinct pairs)
    dups = dropped.filter(pl.col("reason") == "exact-duplicate")
    pool_ids = set(ws.keys("pool").to_pylist())
    assert set(dups["kept_pair_id"]) <= pool_ids
    assert not set(dups["pair_id"]) & pool_ids  # the kept pair stays in the active pool
    assert active_pool(ws).select(pl.len()).collect().item() == 760
    again = ingest_source(ws, SourceSpec(str(shared_raw / "pandalm" / "testset-v1.json")))
    assert (again.added, again.already_present, again.duplicates) == (0, 760, 76)
    assert snapshot(ws) == {"pool": 760, "quarantine": 60, "dropped": 179}


def test_same_pair_from_two_sources_is_kept_once(tmp_path: Path) -> None:
    rows = [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "Car"}]
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "What  is 2+2? ", "chosen": "4", "rejected": "5"},
                                           {"prompt": "New one", "chosen": "x", "rejected": "y"}])
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(a), name="first"))
    second = ingest_source(ws, SourceSpec(str(b), name="second"))
    assert (second.added, second.duplicates, second.already_present) == (1, 1, 0)
    pool = pl.from_arrow(ws.read("pool")).sort("ingest_seq")
    assert pool["source"].to_list() == ["first", "first", "second"]
    assert pool["ingest_seq"].to_list() == [0, 1, 2]
    dup = ws.read("dropped").to_pylist()[0]
    assert dup["kept_pair_id"] == pool["pair_id"][0]
    assert dup["pair_id"] == duplicate_row_id("second", "b.jsonl:1")
    assert json.loads(dup["detail"]) == {"source": "second", "source_id": "b.jsonl:1"}
    assert ingest_source(ws, SourceSpec(str(b), name="second")).added == 0
    assert snapshot(ws) == {"pool": 3, "quarantine": 0, "dropped": 1}


def test_quarantine_is_not_duplicated_on_reingest(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, "not json",
                                              {"prompt": "q", "chosen": "", "rejected": "b"}])
    ws = Workspace(tmp_path / "ws")
    for _ in range(3):
        stats = ingest_source(ws, SourceSpec(str(path)))
        assert stats.quarantined == 2
    assert snapshot(ws) == {"pool": 1, "quarantine": 2, "dropped": 0}
    rows = ws.read("quarantine").to_pylist()
    got = [(r["row"], r["reason"].split(":")[0]) for r in rows]
    assert got == [(2, "malformed JSON"), (3, "empty response")]


def test_failed_source_leaves_the_workspace_as_it_was(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(write_jsonl(tmp_path / "ok.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b"}]))))
    before = {t: ws.read_json(f"{t}/_manifest.json") for t in ("pool", "quarantine", "dropped")}
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
                + ["broken line"])
    (folder / "b.json").write_text('[{"prompt": "q", ')  # the second file cannot be parsed at all
    with pytest.raises(SourceReadError, match=r"b\.json: not valid JSON"):
        ingest_source(ws, SourceSpec(str(folder), format="prompt-chosen-rejected"))
    after = {t: ws.read_json(f"{t}/_manifest.json") for t in ("pool", "quarantine", "dropped")}
    assert after == before
    shards = [s["file"] for s in before["pool"]["shards"]]
    assert sorted(ws.listdir("pool")) == sorted(["_manifest.json", *shards])
    assert snapshot(ws) == {"pool": 1, "quarantine": 0, "dropped": 0}


def test_fresh_workspace_gets_all_three_tables_even_when_empty(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, SourceSpec(str(write_jsonl(tmp_path / "x.jsonl", ["nope"])),
                                         format="prompt-chosen-rejected"))
    assert (stats.added, stats.quarantined) == (0, 1)
    assert sorted(ws.tables()) == ["dropped", "pool", "quarantine"]
    assert active_pool(ws).collect().height == 0


def test_load_records_returns_pairs_in_order(shared_raw: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(shared_raw / "offsetbias" / "biasbench.json")))
    ids = ws.keys("pool").to_pylist()
    records = load_records(ws, [ids[5], ids[0], ids[5]])
    assert [r.pair_id for r in records] == [ids[5], ids[0], ids[5]]
    assert records[1].source == "offsetbias/biasbench" and records[1].label_source == "human"
    assert records[1].meta["bias"] == "length bias"
    with pytest.raises(KeyError, match="not in the pool"):
        load_records(ws, ["missing"])
    assert load_records(ws, []) == []


def test_ingest_clean_export_on_an_fsspec_memory_workspace(shared_raw: Path, tmp_path: Path) -> None:
    import uuid

    from pipeline.clean import decontaminate, exact_dedup
    from pipeline.export import export_curated

    ws = Workspace(f"memory://synpref-{uuid.uuid4().hex[:8]}")
    llmbar = shared_raw / "llmbar" / "Dataset" / "LLMBar"
    assert ingest_source(ws, SourceSpec(str(llmbar))).added == 419
    assert ingest_source(ws, SourceSpec(str(llmbar))).added == 0
    assert exact_dedup(ws).dropped == 0
    assert decontaminate(ws, [str(llmbar / "Natural" / "dataset.json")]).dropped == 72
    assert active_pool(ws).select(pl.len()).collect().item() == 419 - 72
    stats = export_curated(ws, None, str(tmp_path / "out"))
    assert stats.rows == 347 and (tmp_path / "out" / "README.md").exists()


def test_a_tie_never_hides_a_decided_pair_with_the_same_responses(tmp_path: Path) -> None:
    base = {"idx": 0, "motivation_app": "x", "cmp_key": "a_b", "instruction": "Summarize.", "input": ""}
    decided = {**base, "response1": "A short summary.", "response2": "No.",
               "annotator1": 1, "annotator2": 1, "annotator3": 2}
    tie = {**decided, "annotator1": 0, "annotator2": 0, "annotator3": 1}
    undecided = {**decided, "annotator1": 0, "annotator2": 1, "annotator3": 2}
    path = tmp_path / "pandalm.json"
    path.write_text(json.dumps([decided, tie, undecided]))
    ws = Workspace(tmp_path / "ws")
    stats = ingest_source(ws, SourceSpec(str(path), name="panda"))
    assert (stats.added, stats.dropped) == (1, 2)
    pair_id = ws.keys("pool").to_pylist()[0]
    dropped = ws.read("dropped").to_pylist()
    assert [d["reason"] for d in dropped] == ["tie", "undecidable-majority"]
    assert [d["pair_id"] for d in dropped] == [duplicate_row_id("panda", "pandalm.json:2"),
                                               duplicate_row_id("panda", "pandalm.json:3")]
    assert {json.loads(d["detail"])["pair_id"] for d in dropped} == {pair_id}  # the same content
    assert active_pool(ws).select("pair_id").collect()["pair_id"].to_list() == [pair_id]
    again = ingest_source(ws, SourceSpec(str(path), name="panda"))
    assert (again.added, again.already_present) == (0, 1)
    assert snapshot(ws) == {"pool": 1, "quarantine": 0, "dropped": 2}
    # a tie recorded under its content id (as synpref once did) still leaves the decided pair active
    legacy = {"pair_id": pair_id, "stage": "ingest", "reason": "tie", "kept_pair_id": "",
              "similarity": None, "detail": "{}"}
    ws.append("dropped", pa.Table.from_pylist([legacy], schema=DROPPED_SCHEMA), schema=DROPPED_SCHEMA)
    assert active_pool(ws).select(pl.len()).collect().item() == 1
    assert dropped_ids(ws).height == 0


def test_prefetched_keeps_order_and_raises_where_the_source_failed() -> None:
    assert list(prefetched(iter(range(50)), 2)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("line 3: bad JSON")

    seen = []
    with pytest.raises(ValueError, match="line 3"):
        for item in prefetched(failing(), 2):
            seen.append(item)
    assert seen == [1, 2]


def test_prefetched_stops_its_producer_when_the_consumer_stops() -> None:
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for item in prefetched(endless(), 2):
        if item == 3:
            break
    assert not any(t.name.startswith("ingest-prefetch") and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 1 + 2  # what was consumed and the items read ahead
