"""`synpref annotate push | pull | status` on a real workspace against the real Argilla server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from annotation.settings import LABEL_CANNOT_DECIDE, META_ORDER
from pipeline.store import Workspace
from schemas.labels import LABELS_SCHEMA, VERIFICATIONS_SCHEMA, CandidateOrder
from tests import annotation_helpers as helpers
from tests.annotation_helpers import (
    KEY_ENV,
    URL_ENV,
    make_workspace,
    respond,
    run,
    server_records,
    snapshot,
    write_config,
)
from tests.fixtures.argilla_server import ArgillaServer, free_port

pytestmark = pytest.mark.argilla


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def test_push_pull_status_round_trip(
    argilla_server: ArgillaServer, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, argilla_server.owner.api_key)
    dataset = f"cli-{uuid.uuid4().hex[:8]}"
    config = str(write_config(tmp_path, argilla_server.url, dataset, workspace.local_path()))

    outputs: list[str] = []

    def run(*args: str) -> tuple[int, str]:
        code, out = helpers.run(*args)
        outputs.append(out)
        return code, out

    import argilla as rg

    client = rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.owner.api_key)
    code, out = run("annotate", "push", "-c", config, "--limit", "6", "--round", "1")
    assert code == 0, out
    assert "Pushed to synpref/" in out
    ds = client.datasets(dataset, workspace="synpref")
    assert len(server_records(argilla_server, ds.id)) == 6
    # A second limited push sends the NEXT pairs, not the ones already in Argilla.
    assert run("annotate", "push", "-c", config, "--limit", "3")[0] == 0
    assert len(server_records(argilla_server, ds.id)) == 9
    code, out = run("annotate", "push", "-c", config)
    assert code == 0, out
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

    # The owner's key is read from the environment only: no output shows it, no file keeps it.
    secret = argilla_server.owner.api_key.encode()
    assert outputs and not [out for out in outputs if argilla_server.owner.api_key in out]
    leaked = [p for p in workspace.local_path().rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert not leaked, f"the owner API key is stored in {leaked}"
    assert secret not in Path(config).read_bytes()


@pytest.mark.parametrize("failure", ["unreachable", "wrong-key", "no-key"])
def test_failures_exit_nonzero_and_leave_the_workspace_unchanged(
    failure: str,
    argilla_server: ArgillaServer,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "not-a-key-" + uuid.uuid4().hex
    if failure == "no-key":
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, secret)
    if failure == "unreachable":
        # The URL env var (as deployments set it) overrides the config's working URL.
        monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{free_port()}")
    config = str(
        write_config(tmp_path, argilla_server.url, f"fail-{uuid.uuid4().hex[:8]}", workspace.local_path())
    )
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


def test_a_key_without_rights_is_refused_cleanly(
    argilla_server: ArgillaServer, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    annotator = argilla_server.annotators[0]
    monkeypatch.setenv(KEY_ENV, annotator.api_key)
    config = str(
        write_config(tmp_path, argilla_server.url, f"denied-{uuid.uuid4().hex[:8]}", workspace.local_path())
    )
    before = snapshot(workspace.local_path())
    code, out = run("annotate", "push", "-c", config)
    assert code == 1 and "cannot open dataset" in out and annotator.api_key not in out, out
    code, out = run("annotate", "pull", "-c", config)
    assert code == 1 and "no Argilla dataset" in out, out
    assert snapshot(workspace.local_path()) == before
