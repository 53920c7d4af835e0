"""Keyed appends read only the key columns, and only of parts this Workspace has not read yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.store_commit as store_commit
from pipeline.store import Workspace

SCHEMA = pa.schema([("pair_id", pa.string()), ("text", pa.string())])


def rows(ids: list[str]) -> pa.Table:
    return pa.table({"pair_id": ids, "text": [f"long text of {i}" for i in ids]}, schema=SCHEMA)


@pytest.fixture()
def key_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """(part file, columns) of every read the keyed check makes."""
    reads: list[tuple[str, list[str]]] = []
    real = pq.read_table

    def counting(path: str, *args: Any, columns: list[str], **kwargs: Any) -> pa.Table:
        reads.append((path.rsplit("/", 1)[-1], columns))
        return real(path, *args, columns=columns, **kwargs)

    monkeypatch.setattr(store_commit.pq, "read_table", counting)
    return reads


def test_each_keyed_append_reads_only_new_parts_and_only_key_columns(
        tmp_path: Path, key_reads: list[tuple[str, list[str]]]) -> None:
    ws = Workspace(tmp_path / "ws")
    for i in range(5):
        assert ws.append("t", rows([f"a{i}", f"b{i}"]), unique_key="pair_id") == 2
    parts = [s["file"] for s in ws.manifest("t")["shards"]]
    assert [f for f, _ in key_reads] == parts[:4]  # append i read part i-1 only, once
    assert {tuple(c) for _, c in key_reads} == {("pair_id",)}
    assert ws.append("t", rows(["a0", "a4", "new"]), unique_key="pair_id") == 1


def test_another_writer_and_a_replace_are_seen_by_the_cache(tmp_path: Path) -> None:
    ws, other = Workspace(tmp_path / "ws"), Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]), unique_key="pair_id")
    other.append("t", rows(["b"]), unique_key="pair_id")  # a part `ws` has not read
    assert ws.append("t", rows(["a", "b", "c"]), unique_key="pair_id") == 1
    other.replace("t", rows(["x"]))  # parts `ws` cached are gone
    assert ws.append("t", rows(["a", "x"]), unique_key="pair_id") == 1
    assert sorted(ws.read("t").column("pair_id").to_pylist()) == ["a", "x"]
