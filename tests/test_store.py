"""The workspace store: atomic writes, keyed appends, replace, local paths and fsspec URIs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.store import MANIFEST, Workspace, WorkspaceError
from schemas.pair import POOL_SCHEMA, PairRecord

SCHEMA = pa.schema([("pair_id", pa.string()), ("value", pa.int64())], metadata={"synpref.version": "3"})


def rows(ids: list[str], value: int = 0) -> pa.Table:
    return pa.table({"pair_id": ids, "value": [value] * len(ids)}, schema=SCHEMA)


def workspaces(tmp_path: Path) -> list[Workspace]:
    return [
        Workspace(tmp_path / "plain"),
        Workspace(f"file://{tmp_path / 'uri'}"),
        Workspace(f"memory://ws-{uuid.uuid4().hex[:8]}"),
    ]


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["local-path", "file-uri", "memory-uri"])
def test_keyed_appends_add_only_new_rows(tmp_path: Path, kind: int) -> None:
    ws = workspaces(tmp_path)[kind]
    assert ws.append("t", rows(["a", "b", "b"]), unique_key="pair_id") == 2
    assert ws.append("t", rows(["b", "c"], 1), unique_key="pair_id") == 1
    assert ws.append("t", rows(["a", "c"]), unique_key="pair_id") == 0
    table = ws.read("t")
    assert table.column("pair_id").to_pylist() == ["a", "b", "c"]
    assert table.column("value").to_pylist() == [0, 0, 1]
    manifest = ws.manifest("t")
    assert manifest["rows"] == 3 and len(manifest["shards"]) == 2
    assert manifest["schema_version"] == "3"
    assert ws.scan("t").select(pl.col("value").sum()).collect().item() == 1
    assert ws.keys("t").to_pylist() == ["a", "b", "c"]
    assert sum(b.num_rows for b in ws.iter_batches("t", batch_rows=1)) == 3
    assert ws.tables() == ["t"]


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["local-path", "file-uri", "memory-uri"])
def test_replace_swaps_the_whole_table(tmp_path: Path, kind: int) -> None:
    ws = workspaces(tmp_path)[kind]
    ws.append("gold", rows(["a", "b"]))
    ws.append("gold", rows(["c"]))
    old_files = {s["file"] for s in ws.manifest("gold")["shards"]}
    assert ws.replace("gold", rows(["x"], 7)) == 1
    assert ws.read("gold").to_pylist() == [{"pair_id": "x", "value": 7}]
    names = set(ws.listdir("gold"))
    assert not names & old_files  # old shards are deleted once the new manifest is in place
    assert ws.replace("gold", SCHEMA.empty_table()) == 0
    assert ws.read("gold").num_rows == 0 and ws.has_table("gold")


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["local-path", "file-uri", "memory-uri"])
def test_json_and_bytes_round_trip_without_temp_files(tmp_path: Path, kind: int) -> None:
    ws = workspaces(tmp_path)[kind]
    ws.write_json("rounds/1/summary.json", {"round": 1, "acc": 0.5})
    ws.write_json("rounds/1/summary.json", {"round": 1, "acc": 0.75})
    assert ws.read_json("rounds/1/summary.json") == {"acc": 0.75, "round": 1}
    assert ws.read_json("rounds/2/summary.json", default={}) == {}
    ws.write_bytes("blobs/x.bin", b"\x00\x01")
    assert ws.read_bytes("blobs/x.bin") == b"\x00\x01"
    assert ws.listdir("rounds/1") == ["summary.json"]  # the temp file was renamed, not left behind
    ws.remove("blobs")
    assert not ws.exists("blobs/x.bin")


def test_absent_tables_read_empty_with_a_schema(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    assert ws.read("pool", schema=POOL_SCHEMA).schema == POOL_SCHEMA
    assert ws.read("pool", ["pair_id"], schema=POOL_SCHEMA).num_rows == 0
    assert ws.scan("pool", schema=POOL_SCHEMA).collect().height == 0
    assert ws.row_count("pool") == 0 and not ws.has_table("pool")
    assert ws.keys("pool").to_pylist() == []
    assert ws.append("pool", POOL_SCHEMA.empty_table()) == 0
    assert ws.has_table("pool") and ws.read("pool").schema.names == POOL_SCHEMA.names


def test_schema_mismatch_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]), schema=SCHEMA)
    before = ws.read_bytes(f"t/{MANIFEST}")
    files = set(ws.listdir("t"))
    with pytest.raises(WorkspaceError, match=r"table t: rows lack columns \['value'\]"):
        ws.append("t", pa.table({"pair_id": ["b"]}), schema=SCHEMA)
    with pytest.raises(WorkspaceError, match="table t: rows do not match the schema"):
        ws.append("t", pa.table({"pair_id": ["b"], "value": ["not a number"]}), schema=SCHEMA)
    assert ws.read_bytes(f"t/{MANIFEST}") == before
    assert set(ws.listdir("t")) == files


def test_only_shards_in_the_manifest_are_visible(tmp_path: Path) -> None:
    """A writer killed after its shard but before its manifest leaves an orphan nobody reads."""
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]))
    pq.write_table(rows(["orphan"]), ws.local_path("t", "part-000001-dead.parquet"))
    (ws.local_path("t") / f"{MANIFEST}.tmp-1234").write_text("{half")
    assert ws.read("t").column("pair_id").to_pylist() == ["a"]
    assert ws.scan("t").collect()["pair_id"].to_list() == ["a"]
    assert ws.append("t", rows(["orphan"]), unique_key="pair_id") == 1
    assert sorted(ws.read("t").column("pair_id").to_pylist()) == ["a", "orphan"]


def test_manifest_records_hashes_and_rows(tmp_path: Path) -> None:
    import hashlib

    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a", "b"]))
    manifest = json.loads(ws.read_bytes(f"t/{MANIFEST}"))
    shard = manifest["shards"][0]
    assert shard["rows"] == 2
    assert hashlib.sha256(ws.read_bytes(f"t/{shard['file']}")).hexdigest() == shard["sha256"]
    assert pq.read_metadata(ws.local_path("t", shard["file"])).row_group(0).column(0).compression == "ZSTD"


def test_local_path_needs_a_local_workspace(tmp_path: Path) -> None:
    assert Workspace(f"file://{tmp_path}/ws").local_path("rm").parent == tmp_path / "ws"
    with pytest.raises(WorkspaceError, match="not a local workspace"):
        Workspace("memory://remote-ws").local_path("rm")


def test_pool_rows_round_trip_through_a_memory_workspace() -> None:
    ws = Workspace(f"memory://pool-{uuid.uuid4().hex[:8]}")
    record = PairRecord(conversation=({"role": "user", "content": "hi"},), chosen="a", rejected="b",
                        source="s", meta={"k": 1})
    ws.append("pool", pa.Table.from_pylist([record.to_row()], schema=POOL_SCHEMA), unique_key="pair_id",
              schema=POOL_SCHEMA)
    back = PairRecord.from_row(ws.read("pool").to_pylist()[0])
    assert back == record
