"""Every workspace table is also a Delta Lake table: real deltalake, polars and (when installed) DuckDB
read the committed parts through `_delta_log/`, one Delta version per commit."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipeline import store_delta
from pipeline.store import Workspace
from pipeline.store_verify import table_names
from tests import flow_helpers
from tests.test_store_concurrency import rows, run_keyed_writers

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api


def delta_frame(ws: Workspace, table: str, version: int | None = None) -> pl.DataFrame:
    return pl.read_delta(ws.path(table), version=version).sort("pair_id")


def synpref_frame(ws: Workspace, table: str) -> pl.DataFrame:
    frame = pl.from_arrow(ws.read(table))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("pair_id")


def manifest_files(ws: Workspace, table: str) -> set[str]:
    return {s["file"] for s in ws.manifest(table)["shards"]}


def assert_mirrored(ws: Workspace, table: str) -> None:
    """The Delta table lists exactly the manifest's parts and reads as `ws.read` does."""
    assert store_delta.delta_files(ws, table) == manifest_files(ws, table)
    ours = synpref_frame(ws, table)
    assert delta_frame(ws, table).select(ours.columns).equals(ours)
    assert not [p for p in ws.verify(table) if p.kind == "delta"]


def test_appends_and_a_replace_read_the_same_through_delta(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    for i in range(3):
        ws.append("t", rows([f"a{i}", f"b{i}", "shared"], i), unique_key="pair_id")
        assert_mirrored(ws, "t")
    delta = DeltaTable(ws.path("t"))
    assert delta.version() == ws.manifest("t")["version"] - 1 == 2  # one Delta version per commit
    latest = delta.history(1)[0]
    assert latest["synpref.version"] == 3 and latest["synpref.commit"] == ws.manifest("t")["commit"]
    assert latest["synpref.table"] == "t"
    # Time travel: version 0 is the first append, while its part is still on disk.
    assert delta_frame(ws, "t", version=0)["pair_id"].to_list() == ["a0", "b0", "shared"]
    assert delta_frame(ws, "t", version=1).height == 5
    old = manifest_files(ws, "t")
    ws.replace("t", rows(["x", "y"], 9))
    assert_mirrored(ws, "t")
    delta = DeltaTable(ws.path("t"))
    assert delta.version() == 3
    assert delta.history(1)[0]["operationParameters"]["mode"] == "Append"  # removes + adds, no rewrite
    assert delta_frame(ws, "t")["pair_id"].to_list() == ["x", "y"]
    # The replaced parts were deleted, as after a VACUUM: only the latest version is whole.
    assert old and not any(Path(ws.path("t", f)).exists() for f in old)
    assert store_delta.delta_files(ws, "t") == manifest_files(ws, "t")


def test_each_part_carries_its_column_bounds_so_delta_readers_skip_the_others(tmp_path: Path) -> None:
    import pyarrow.compute as pc

    ws = Workspace(tmp_path / "ws")
    for i in range(4):  # four parts, each holding its own range of ids
        ws.append("t", pa.table({"pair_id": [f"{i}-{k}" for k in range(5)], "round": [i, i, i, i, None],
                                 "score": [0.5, float("nan"), 1.0, 2.0, 3.0],
                                 "text": ["x" * 100] * 5}), unique_key="pair_id")
    delta = DeltaTable(ws.path("t"))
    actions = {a["path"]: a for a in pa.table(delta.get_add_actions(flatten=True)).to_pylist()}
    for shard in ws.manifest("t")["shards"]:
        part = pl.read_parquet(ws.path("t", shard["file"]))
        stats = actions[shard["file"]]
        assert (stats["min.pair_id"], stats["max.pair_id"]) == (part["pair_id"].min(), part["pair_id"].max())
        assert (stats["min.round"], stats["max.round"], stats["null_count.round"]) == (
            part["round"].min(), part["round"].max(), 1)
        # NaN is outside the bounds, as Parquet writers keep it (a comparison with NaN is false)
        assert (stats["min.score"], stats["max.score"]) == (0.5, 3.0)
    # No bounds for strings longer than 64 characters: a cut maximum would be too small.
    assert all(a[f"{bound}.text"] is None for a in actions.values() for bound in ("min", "max"))
    dataset = delta.to_pyarrow_dataset()
    wanted = pc.field("pair_id") == "2-3"
    assert len(list(dataset.get_fragments())) == 4 and len(list(dataset.get_fragments(filter=wanted))) == 1
    assert pl.scan_delta(ws.path("t")).filter(pl.col("pair_id") == "2-3").collect()["round"].to_list() == [2]


def test_a_new_column_widens_the_delta_schema(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a", "b"]))
    wider = rows(["c"], 1).append_column("note", pa.array(["new"]))
    ws.append("t", wider)
    assert DeltaTable(ws.path("t")).history(1)[0]["operationParameters"]["mode"] == "Overwrite"
    assert delta_frame(ws, "t")["note"].to_list() == [None, None, "new"]
    assert_mirrored(ws, "t")
    ws.append("t", rows(["d"], 2))  # a narrower append keeps the wider Delta schema
    assert "note" in delta_frame(ws, "t").columns
    assert_mirrored(ws, "t")


def test_duckdb_reads_the_delta_log(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a", "b"]))
    ws.append("t", rows(["c"], 1))
    con = duckdb.connect()
    try:
        found = con.execute(f"SELECT pair_id FROM delta_scan('{ws.path('t')}') ORDER BY pair_id").fetchall()
    except duckdb.Error as exc:  # the delta extension is downloaded on first use
        pytest.skip(f"DuckDB's delta extension is not available: {exc}")
    assert [r[0] for r in found] == ["a", "b", "c"]


def test_a_commit_made_without_the_mirror_is_caught_up_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the process died between the manifest's rename and the Delta commit."""
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]))
    monkeypatch.setenv(store_delta.ENV, "0")
    ws.append("t", rows(["b"]))
    ws.replace("t", rows(["c", "d"]))  # the Delta log still lists the first part only
    assert store_delta.delta_files(ws, "t") != manifest_files(ws, "t")
    stale = [p for p in ws.verify("t") if p.kind == "delta"]
    assert len(stale) == 1 and not stale[0].damaged
    monkeypatch.setenv(store_delta.ENV, "1")
    ws.append("t", rows(["e"]))
    assert_mirrored(ws, "t")
    assert ws.verify() == []


def test_a_lost_delta_commit_is_caught_up_by_ensure_and_by_the_next_commit(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]))
    ws.append("t", rows(["b"]))
    log = Path(ws.path("t", store_delta.LOG_DIR))
    (log / f"{1:020d}.json").unlink()  # the Delta commit of the second append never landed
    assert store_delta.delta_files(ws, "t") == {ws.manifest("t")["shards"][0]["file"]}
    assert store_delta.ensure(ws, "t") == "appended"
    assert_mirrored(ws, "t")
    assert store_delta.ensure(ws, "t") == "in sync"
    (log / f"{1:020d}.json").unlink()
    ws.append("t", rows(["c"]))  # the same process commits again: its cached table is not trusted
    assert_mirrored(ws, "t")


def test_a_failing_mirror_never_fails_the_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]))

    def broken(ws: Workspace, table: str, manifest: dict[str, Any] | None = None) -> str:
        raise OSError("disk went away")

    monkeypatch.setattr(store_delta, "sync", broken)
    with caplog.at_level(logging.WARNING, logger=store_delta.__name__):
        assert ws.append("t", rows(["b"])) == 1
    assert "the Delta log was not updated (OSError: disk went away)" in caplog.text
    assert ws.row_count("t") == 2
    monkeypatch.undo()
    ws.append("t", rows(["c"]))
    assert_mirrored(ws, "t")


def test_a_log_that_no_longer_loads_is_rebuilt_from_the_manifest(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]))
    ws.append("t", rows(["b"]))
    (Path(ws.path("t", store_delta.LOG_DIR)) / f"{0:020d}.json").unlink()  # no checkpoint to start from
    [problem] = ws.verify()
    assert problem.kind == "delta" and "does not load" in problem.detail and not problem.damaged
    store_delta._tables.clear()  # another process: it has no cached Delta table to go on from
    ws.append("t", rows(["c"]))
    assert_mirrored(ws, "t")
    assert DeltaTable(ws.path("t")).version() == 0  # rebuilt: its history starts again


@pytest.mark.parametrize("column", [
    pa.array([None, None], pa.null()),
    pa.array([1, 2], pa.uint8()),
    pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32(), 2)),
    pa.array([1, 2], pa.timestamp("ns")),
], ids=["null", "uint8", "fixed-size-list", "timestamp-ns"])
def test_a_schema_delta_cannot_hold_is_skipped_not_failed(
        tmp_path: Path, column: pa.Array, caplog: pytest.LogCaptureFixture) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.append("ok", rows(["a"]))
    ws.append("t", rows(["a"]))  # first a Delta log, then a schema it cannot hold
    table = pa.table({"pair_id": ["b", "c"], "odd": column})
    with caplog.at_level(logging.WARNING, logger=store_delta.__name__):
        ws.replace("t", table)
        ws.append("t", table.slice(0, 0))  # a commit that adds nothing
    assert ws.read("t").num_rows == 2
    assert not Path(ws.path("t", store_delta.LOG_DIR)).exists()  # no stale log left for other engines
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "table t: no Delta log, Delta Lake cannot hold its schema (column odd" in lines[0]
    assert "its old Delta log was removed" in lines[0]
    assert ws.verify() == []
    assert_mirrored(ws, "ok")


def test_a_workspace_deltalake_cannot_reach_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    ws = Workspace(f"memory://delta-{uuid.uuid4().hex[:8]}")
    with caplog.at_level(logging.WARNING, logger=store_delta.__name__):
        ws.append("t", rows(["a"]))
        ws.append("t", rows(["b"]))
    assert ws.row_count("t") == 2
    assert store_delta.sync(ws, "t") == "skipped"
    assert sum("deltalake cannot reach memory://" in r.getMessage() for r in caplog.records) == 1


def test_s3_storage_options_are_translated_for_deltalake() -> None:
    options = {"key": "K", "secret": "S", "client_kwargs": {"endpoint_url": "http://minio:9000",
                                                            "region_name": "eu-west-1"}, "anon": False}
    assert store_delta.storage_options("s3", options) == {
        "aws_access_key_id": "K", "aws_secret_access_key": "S", "aws_endpoint_url": "http://minio:9000",
        "aws_region": "eu-west-1"}


def test_two_writer_processes_end_with_a_delta_table_equal_to_the_manifest(tmp_path: Path) -> None:
    root, rounds = str(tmp_path / "ws"), 10
    written = run_keyed_writers(root, rounds)
    ws = Workspace(root)
    assert sum(written) == ws.row_count("t") == rounds * 8
    assert_mirrored(ws, "t")
    # Every manifest commit made one Delta commit, in the same order.
    history = DeltaTable(ws.path("t")).history()
    assert sorted(h["synpref.version"] for h in history) == list(range(1, ws.manifest("t")["version"] + 1))


@pytest.mark.slow
def test_every_table_of_a_curate_run_has_a_readable_delta_log(curated_run: dict[str, Any]) -> None:
    ws = Workspace(curated_run["config"].workspace)
    names = table_names(ws)
    mirrored = [t for t in names if store_delta.delta_files(ws, t) is not None]
    skipped = sorted(set(names) - set(mirrored))
    assert {"pool", "curated", "judgments", "scores", "dropped"} <= set(mirrored), names
    assert all(t.startswith("embeddings/") for t in skipped), skipped  # fixed-size vectors only
    for table in mirrored:
        assert store_delta.delta_files(ws, table) == manifest_files(ws, table), table
        assert pl.read_delta(ws.path(table)).height == ws.row_count(table), table
    assert not [p for p in ws.verify() if p.kind == "delta"]
