"""Export: TRL-ready shards that `datasets` reads as-is, a dataset card with counts, atomic swaps."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from pipeline.clean import exact_dedup
from pipeline.export import CURATED_SCHEMA, export_curated
from pipeline.ingest import ingest_source
from pipeline.sources import SourceSpec
from pipeline.store import Workspace


@pytest.fixture
def ws(shared_raw: Path, tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(shared_raw / "ultrafeedback" / "eval_clean.jsonl"), license="MIT",
                                 label_source="ai", name="ultrafeedback"))
    ingest_source(ws, SourceSpec(str(shared_raw / "llamafactory" / "dpo_en_demo.json"), name="llamafactory"))
    return ws


def test_export_whole_active_pool_reads_with_datasets(ws: Workspace, tmp_path: Path) -> None:
    exact_dedup(ws)
    out = tmp_path / "out"
    stats = export_curated(ws, None, str(out), shard_rows=200)
    assert stats.rows == 199 + 295
    assert stats.shards == 3
    assert sorted(os.listdir(out / "data")) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert stats.counts["source"] == {"llamafactory": 295, "ultrafeedback": 199}
    assert stats.counts["label_source"] == {"unknown": 295, "ai": 199}
    assert stats.counts["license"] == {"(none)": 295, "MIT": 199}
    assert ws.row_count("curated") == 494
    assert ws.read("curated").schema.equals(CURATED_SCHEMA)
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 494
    row = next(r for r in ds if r["source"] == "ultrafeedback")
    assert row["prompt"][0]["role"] == "user"
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "path: data/train-*.parquet" in card
    assert "| llamafactory | 295 |" in card and "| ultrafeedback | 199 |" in card
    assert ws.read_bytes("curated/README.md").decode() == card
    whole = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert whole.num_rows == 494


def test_export_selection_flips_and_provenance(ws: Workspace, tmp_path: Path) -> None:
    pool = pl.from_arrow(ws.read("pool")).sort("ingest_seq")
    chosen_ids = pool["pair_id"][:3].to_list()
    selection = pl.DataFrame({"pair_id": chosen_ids, "flipped": [False, True, False],
                              "origin": ["gold", "silver", "stage2-keep"], "round": [1, 2, 2],
                              "filter": ["human", "judges", "filter-b"]})
    stats = export_curated(ws, selection, str(tmp_path / "out"))
    assert stats.rows == 3
    assert stats.counts["origin"] == {"gold": 1, "silver": 1, "stage2-keep": 1}
    assert stats.counts["round"] == {"2": 2, "1": 1}
    assert stats.counts["flipped"] == {"False": 2, "True": 1}
    rows = {r["pair_id"]: r for r in ws.read("curated").to_pylist()}
    original = {r["pair_id"]: r for r in pool.head(3).to_dicts()}
    flipped = rows[chosen_ids[1]]
    assert flipped["chosen"] == [{"role": "assistant", "content": original[chosen_ids[1]]["rejected"]}]
    assert flipped["rejected"] == [{"role": "assistant", "content": original[chosen_ids[1]]["chosen"]}]
    kept = rows[chosen_ids[0]]
    assert kept["chosen"][0]["content"] == original[chosen_ids[0]]["chosen"]
    assert kept["prompt"] == [{"role": m["role"], "content": m["content"]}
                              for m in original[chosen_ids[0]]["conversation"]]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| gold | 1 |" in card and "| True | 1 |" in card


def test_export_selection_defaults_and_unknown_ids(ws: Workspace) -> None:
    ids = ws.keys("pool").to_pylist()[:2]
    stats = export_curated(ws, pl.DataFrame({"pair_id": ids}))
    assert stats.rows == 2 and stats.out_dir is None
    assert stats.counts["origin"] == {"source-label": 2}
    with pytest.raises(ValueError, match="not in the pool"):
        export_curated(ws, pl.DataFrame({"pair_id": ["nope"]}))
    with pytest.raises(ValueError, match="pair_id column"):
        export_curated(ws, pl.DataFrame({"id": ids}))
    assert ws.row_count("curated") == 2  # the failed exports changed nothing


def test_reexport_replaces_the_folder_whole(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_curated(ws, None, str(out), shard_rows=100)
    assert len(os.listdir(out / "data")) == 5
    (out / "stray.txt").write_text("left by hand")
    ids = ws.keys("pool").to_pylist()[:10]
    export_curated(ws, pl.DataFrame({"pair_id": ids}), str(out), shard_rows=100)
    assert sorted(os.listdir(out)) == ["README.md", "data"]
    assert os.listdir(out / "data") == ["train-00000-of-00001.parquet"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging or old folders left
    assert ws.row_count("curated") == 10


def test_export_to_an_fsspec_uri(ws: Workspace) -> None:
    import fsspec

    stats = export_curated(ws, None, "memory://exports/run1")
    fs = fsspec.filesystem("memory")
    assert fs.exists("/exports/run1/README.md")
    assert len(fs.ls("/exports/run1/data")) == stats.shards == 1


def test_export_reports_progress_per_shard(ws: Workspace, tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    stats = export_curated(ws, None, str(tmp_path / "out"), shard_rows=200,
                           progress=lambda step, done, total: calls.append((step, done, total)))
    assert stats.rows == 494
    assert calls == [("workspace table", 0, 494), ("workspace table", 494, 494),
                     ("export shards", 200, 494), ("export shards", 400, 494), ("export shards", 494, 494)]
