"""An annotator submits a preference in the real Argilla UI (headless Debian Chromium) and
`synpref annotate pull` turns it into a verification and a gold label."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from annotation.settings import META_ORDER
from pipeline.store import Workspace
from schemas.labels import LABELS_SCHEMA, VERIFICATIONS_SCHEMA, CandidateOrder
from tests.annotation_helpers import (
    KEY_ENV,
    make_workspace,
    open_in_annotation_mode,
    run,
    server_records,
    write_config,
)
from tests.fixtures.argilla_server import ArgillaServer

pytestmark = [pytest.mark.argilla, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
UI_TIMEOUT_MS = 60_000


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path / "ws")


def test_annotator_submits_in_the_ui_and_pull_sees_it(
    argilla_server: ArgillaServer, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("chromium missing: run scripts/setup-test-services.sh", pytrace=False)
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv(KEY_ENV, argilla_server.owner.api_key)
    dataset = f"ui-{uuid.uuid4().hex[:8]}"
    config = str(write_config(tmp_path, argilla_server.url, dataset, workspace.local_path(), overlap=1))
    code, out = run("annotate", "push", "-c", config, "--limit", "3")
    assert code == 0, out

    import argilla as rg

    dataset_id = (
        rg.Argilla(api_url=argilla_server.url, api_key=argilla_server.owner.api_key)
        .datasets(dataset, workspace="synpref")
        .id
    )
    annotator = argilla_server.annotators[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_in_annotation_mode(page, argilla_server, annotator, dataset, dataset_id, UI_TIMEOUT_MS)
            page.click("[aria-label='Question: rationale'] .container")
            page.keyboard.type("checked the arithmetic by hand")
            page.click("label[for=preference_candidate_1]")
            page.click("label[for=confidence_4]")
            page.click("label[for=objectivity_check_subjective]")
            with page.expect_response(
                lambda r: "/responses" in r.url and r.request.method in ("POST", "PUT")
            ) as sent:
                page.click("button.button--submit")
            assert sent.value.status in (200, 201), sent.value.text()
        finally:
            browser.close()

    code, out = run("annotate", "pull", "-c", config)
    assert code == 0, out
    rows = workspace.read("verifications", schema=VERIFICATIONS_SCHEMA).to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert row["annotator"] == annotator.username and row["status"] == "submitted"
    assert row["confidence"] == 4 and row["objective"] is False
    assert row["rationale"] == "checked the arithmetic by hand"
    record = next(r for r in server_records(argilla_server, dataset_id) if r["external_id"] == row["pair_id"])
    order = CandidateOrder(record["metadata"][META_ORDER])
    assert row["verdict"] == ("chosen" if order == CandidateOrder.chosen_first else "rejected")
    gold = workspace.read("gold", schema=LABELS_SCHEMA).to_pylist()
    assert [(g["pair_id"], g["verdict"]) for g in gold] == [(row["pair_id"], row["verdict"])]
