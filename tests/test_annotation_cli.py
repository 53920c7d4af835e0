"""`synpref annotate push | pull | status` on a real workspace against the real Argilla server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from annotation.settings import LABEL_CANNOT_DECIDE, META_ORDER
from flows.cli.main import app
from pipeline.attributes import heuristic_attributes
from pipeline.pool import load_records
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA
from schemas.labels import JUDGMENTS_SCHEMA, LABELS_SCHEMA, VERIFICATIONS_SCHEMA, CandidateOrder
from tests.annotation_helpers import SAMPLE, respond, sample_judgments, server_records
from tests.fixtures.argilla_server import ArgillaServer, free_port

pytestmark = pytest.mark.argilla
KEY_ENV = "SYNPREF_CLI_TEST_ARGILLA_KEY"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output + (getattr(result, "stderr", "") or "")


def write_config(tmp: Path, url: str, dataset: str, ws: Path, overlap: int = 2) -> Path:
    config = tmp / "synpref.toml"
    config.write_text(
        f'workspace = "{ws}"\n\n[argilla]\nenabled = true\napi_url = "{url}"\napi_key_env = "{KEY_ENV}"\n'
        f'workspace = "synpref"\ndataset = "{dataset}"\noverlap = {overlap}\nbatch_size = 4\n'
    )
    return config


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A workspace with 10 real pairs, heuristic attributes and two judges' votes."""
    ws_path = tmp_path / "ws"
    code, out = run("ingest", str(SAMPLE), "--limit", "10", "-w", str(ws_path))
    assert code == 0, out
    ws = Workspace(str(ws_path))
    ids = ws.read("pool", columns=["pair_id"]).column("pair_id").to_pylist()
    pairs = load_records(ws, ids)
    rows = [
        {"pair_id": p.pair_id, **heuristic_attributes(p).model_dump(mode="json"), "model": "heuristic"}
        for p in pairs
    ]
    ws.append("attributes", pa.Table.from_pylist(rows, schema=ATTRIBUTES_SCHEMA), schema=ATTRIBUTES_SCHEMA)
    judged = [j.model_dump(mode="json") for j in sample_judgments(pairs)]
    ws.append("judgments", pa.Table.from_pylist(judged, schema=JUDGMENTS_SCHEMA), schema=JUDGMENTS_SCHEMA)
    return ws


def test_push_pull_status_round_trip(
    argilla_server: ArgillaServer, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, argilla_server.owner.api_key)
    dataset = f"cli-{uuid.uuid4().hex[:8]}"
    config = str(write_config(tmp_path, argilla_server.url, dataset, workspace.local_path()))

    code, out = run("annotate", "push", "-c", config, "--limit", "6", "--round", "1")
    assert code == 0, out
    assert "Pushed to synpref/" in out
    code, out = run("annotate", "push", "-c", config)
    assert code == 0, out

    import argilla as rg

    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.owner.api_key)
    ds = client.datasets(dataset, workspace="synpref")
    records = server_records(argilla_server, ds.id)
    assert len(records) == 10 and len({r["external_id"] for r in records}) == 10

    code, out = run("annotate", "status", "-c", config)
    assert code == 0, out
    assert "Progress of synpref/" in out and "Krippendorff" in out

    ann1, ann2 = argilla_server.annotators
    first, second, third = records[0], records[1], records[2]
    for ann in (ann1, ann2):
        respond(argilla_server, ann, first, "candidate_1")
    respond(argilla_server, ann1, second, "candidate_2")
    respond(argilla_server, ann2, second, "candidate_1")
    respond(argilla_server, ann1, third, LABEL_CANNOT_DECIDE, confidence=1)

    code, out = run("annotate", "pull", "-c", config)
    assert code == 0, out
    verifications = workspace.read("verifications", schema=VERIFICATIONS_SCHEMA).to_pylist()
    assert len(verifications) == 5
    assert {v["status"] for v in verifications if v["pair_id"] == third["external_id"]} == {"discarded"}
    gold = {g["pair_id"]: g for g in workspace.read("gold", schema=LABELS_SCHEMA).to_pylist()}
    order = CandidateOrder(first["metadata"][META_ORDER])
    expected = "chosen" if order == CandidateOrder.chosen_first else "rejected"
    assert set(gold) == {first["external_id"]}, "a 1-1 split and a cannot-decide give no gold label"
    assert (
        gold[first["external_id"]]["verdict"] == expected and gold[first["external_id"]]["origin"] == "human"
    )

    # A second pull adds nothing; a later answer adds exactly one row.
    code, out = run("annotate", "pull", "-c", config)
    assert code == 0, out
    assert workspace.row_count("verifications") == 5
    respond(argilla_server, ann2, third, "candidate_2")
    assert run("annotate", "pull", "-c", config)[0] == 0
    assert workspace.row_count("verifications") == 6

    code, out = run("annotate", "status", "-c", config)
    assert code == 0, out
    assert ann1.username in out and ann2.username in out and "Cohen's kappa" in out

    # Pushing again skips verified pairs and everything already in Argilla.
    code, out = run("annotate", "push", "-c", config)
    assert code == 0, out
    assert len(server_records(argilla_server, ds.id)) == 10


@pytest.mark.parametrize("failure", ["unreachable", "wrong-key", "no-key"])
def test_failures_exit_nonzero_and_leave_the_workspace_unchanged(
    failure: str,
    argilla_server: ArgillaServer,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"http://127.0.0.1:{free_port()}" if failure == "unreachable" else argilla_server.url
    secret = "not-a-key-" + uuid.uuid4().hex
    if failure == "no-key":
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, secret)
    config = str(write_config(tmp_path, url, f"fail-{uuid.uuid4().hex[:8]}", workspace.local_path()))
    before = snapshot(workspace.local_path())
    expected = {"unreachable": "not reachable", "wrong-key": "rejected the API key", "no-key": KEY_ENV}[
        failure
    ]
    for command in ("push", "pull", "status"):
        code, out = run("annotate", command, "-c", config)
        assert code == 1, out
        assert expected in out and secret not in out
        assert "Traceback" not in out
    assert snapshot(workspace.local_path()) == before
