"""`synpref doctor` and damaged tables: every part is checked against its manifest, and commands
refuse to read a table with a damaged part, naming the table, the part and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from pipeline.store import Workspace, WorkspaceError

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
SAMPLE = Path(__file__).resolve().parents[1] / "examples/data/hh-rlhf/harmless-base/test.jsonl.gz"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


@pytest.fixture()
def ingested(tmp_path: Path) -> Workspace:
    code, out = run("ingest", str(SAMPLE), "-w", str(tmp_path / "ws"))
    assert code == 0, out
    return Workspace(tmp_path / "ws")


def pool_part(ws: Workspace) -> Path:
    return ws.local_path("pool", ws.manifest("pool")["shards"][0]["file"])


def doctor_json(ws: Workspace) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["doctor", "-w", ws.uri, "--json"], env=ENV)
    return result.exit_code, json.loads(result.stdout)


def test_a_healthy_workspace_passes(ingested: Workspace) -> None:
    code, out = run("doctor", "-w", ingested.uri)
    assert code == 0, out
    assert "every part matches its manifest; 0 orphan file(s)" in out
    code, report = doctor_json(ingested)
    assert code == 0 and report["ok"] and report["problems"] == []
    pool = next(t for t in report["tables"] if t["table"] == "pool")
    assert pool["rows"] == ingested.row_count("pool") > 0 and pool["parts"] == 1


def test_flipped_bytes_are_named_by_doctor_and_refused_by_reads(ingested: Workspace) -> None:
    part = pool_part(ingested)
    data = bytearray(part.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])  # same size
    part.write_bytes(bytes(data))
    code, out = run("doctor", "-w", ingested.uri)
    assert code == 1
    assert part.name in out and "sha256" in out and "1 damaged part(s)" in out
    code, report = doctor_json(ingested)
    assert code == 1 and not report["ok"]
    assert [(p["table"], p["file"], p["kind"]) for p in report["problems"]] == [("pool", part.name, "sha256")]
    message = rf"table pool is damaged: part {part.name} does not match its recorded sha256"
    with pytest.raises(WorkspaceError, match=message):
        ingested.read("pool", columns=["pair_id"])
    with pytest.raises(WorkspaceError, match=message):
        next(ingested.iter_batches("pool"))


def test_a_truncated_part_is_refused_by_scan_and_by_commands(ingested: Workspace) -> None:
    part = pool_part(ingested)
    part.write_bytes(part.read_bytes()[:-100])
    code, report = doctor_json(ingested)
    assert code == 1 and [p["kind"] for p in report["problems"]] == ["size"]
    with pytest.raises(WorkspaceError, match=rf"part {part.name} is \d+ bytes, the manifest records \d+"):
        ingested.scan("pool")
    code, out = run("status", "-w", ingested.uri)
    assert code == 1
    assert f"table pool is damaged: part {part.name}" in " ".join(out.split())
    assert "Traceback" not in out


def test_a_missing_part_and_an_unreadable_manifest_are_damage(ingested: Workspace) -> None:
    part = pool_part(ingested)
    part.unlink()
    (ingested.local_path("quarantine") / "_manifest.json").write_text("{half")
    problems = {(p.table, p.kind) for p in ingested.verify()}
    assert problems == {("pool", "missing"), ("quarantine", "manifest")}
    with pytest.raises(WorkspaceError, match=rf"part {part.name} is missing"):
        ingested.read("pool")
    assert run("doctor", "-w", ingested.uri)[0] == 1


def test_orphans_are_counted_but_harmless_and_nested_tables_are_checked(ingested: Workspace) -> None:
    ingested.append("rounds/1/retrieved", pa.table({"pair_id": ["a", "b"]}))
    orphan = ingested.local_path("pool", "part-000009-deadbeef.parquet")
    orphan.write_bytes(b"left by a writer killed before its commit")
    problems = ingested.verify()
    assert [(p.table, p.file, p.kind, p.damaged) for p in problems] == [
        ("pool", orphan.name, "orphan", False)]
    code, report = doctor_json(ingested)
    assert code == 0 and report["orphans"] == 1 and report["damaged"] == 0
    assert "rounds/1/retrieved" in [t["table"] for t in report["tables"]]
    nested = "rounds/1/retrieved"
    ingested.local_path(nested, ingested.manifest(nested)["shards"][0]["file"]).write_bytes(b"not parquet")
    assert [(p.table, p.kind) for p in ingested.verify(nested)] == [(nested, "size")]


def test_doctor_on_a_path_with_no_workspace_says_so(tmp_path: Path) -> None:
    code, out = run("doctor", "-w", str(tmp_path / "nothing-here"))
    assert code == 1 and "no workspace at" in out
    assert not (tmp_path / "nothing-here").exists()
