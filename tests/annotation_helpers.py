"""What the Argilla tests share: real pairs with attributes and judge votes, and annotators who
answer through their own API keys exactly as the UI does (POST /api/v1/records/{id}/responses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
from typer.testing import CliRunner

from annotation.settings import (
    QUESTION_CONFIDENCE,
    QUESTION_OBJECTIVITY,
    QUESTION_PREFERENCE,
    QUESTION_RATIONALE,
)
from flows.cli.main import app
from pipeline.attributes import heuristic_attributes
from pipeline.pool import load_records
from pipeline.sources import load_pairs
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA, PreferenceAttributes
from schemas.labels import JUDGMENTS_SCHEMA, Judgment, Verdict
from schemas.pair import PairRecord
from tests.fixtures.argilla_server import ArgillaServer, ArgillaUser

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "data" / "llmbar-natural"


def sample_pairs(n: int) -> list[PairRecord]:
    loaded = load_pairs(str(SAMPLE), limit=n)
    return [PairRecord.from_row(r) for r in loaded.pairs.to_pylist()]


def sample_attributes(pairs: list[PairRecord]) -> dict[str, PreferenceAttributes]:
    return {p.pair_id: heuristic_attributes(p) for p in pairs}


def sample_judgments(pairs: list[PairRecord]) -> list[Judgment]:
    """Two judges that both keep the source label: what a rule judge writes to `judgments`."""
    return [
        Judgment(pair_id=p.pair_id, judge=name, model=f"test/{name}", verdict=Verdict.chosen, margin=0.5)
        for p in pairs
        for name in ("judge-a", "judge-b")
    ]


def server_records(server: ArgillaServer, dataset_id: Any) -> list[dict[str, Any]]:
    """Every record of a dataset, with responses, as the owner sees it."""
    out, offset = [], 0
    while True:
        reply = httpx.get(
            f"{server.url}/api/v1/datasets/{dataset_id}/records",
            params={"include": ["responses", "suggestions"], "offset": offset, "limit": 1000},
            headers={"X-Argilla-Api-Key": server.owner.api_key},
            timeout=30,
        )
        reply.raise_for_status()
        items = reply.json()["items"]
        out.extend(items)
        if len(items) < 1000:
            return out
        offset += len(items)


def respond(
    server: ArgillaServer,
    annotator: ArgillaUser,
    record: dict[str, Any],
    label: str | None,
    *,
    status: str = "submitted",
    confidence: int = 4,
    rationale: str = "",
) -> dict[str, Any]:
    """One annotator's answer to one record, sent with that annotator's own key."""
    values: dict[str, Any] = {}
    if label is not None:
        values = {
            QUESTION_PREFERENCE: {"value": label},
            QUESTION_CONFIDENCE: {"value": confidence},
            QUESTION_OBJECTIVITY: {"value": "objective"},
        }
        if rationale:
            values[QUESTION_RATIONALE] = {"value": rationale}
    body: dict[str, Any] = {"values": values, "status": status}
    reply = httpx.post(
        f"{server.url}/api/v1/records/{record['id']}/responses",
        json=body,
        headers={"X-Argilla-Api-Key": annotator.api_key},
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    return reply.json()


KEY_ENV = "SYNPREF_CLI_TEST_ARGILLA_KEY"
URL_ENV = "SYNPREF_CLI_TEST_ARGILLA_URL"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output + (getattr(result, "stderr", "") or "")


def write_config(tmp: Path, url: str, dataset: str, ws: Path, overlap: int = 2) -> Path:
    config = tmp / "synpref.toml"
    config.write_text(
        f'workspace = "{ws}"\n\n[argilla]\nenabled = true\napi_url = "{url}"\napi_key_env = "{KEY_ENV}"\n'
        f'api_url_env = "{URL_ENV}"\n'
        f'workspace = "synpref"\ndataset = "{dataset}"\noverlap = {overlap}\nbatch_size = 4\n'
    )
    return config


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def make_workspace(ws_path: Path) -> Workspace:
    """A workspace with 10 real pairs (ingested by the CLI), heuristic attributes, two judges' votes."""
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


def open_in_annotation_mode(page: Any, server: ArgillaServer, annotator: ArgillaUser, dataset_name: str,
                            dataset_id: Any, timeout_ms: int) -> None:
    """Sign in to the Argilla UI as `annotator` and open the dataset's annotation view."""
    page.set_default_timeout(timeout_ms)
    page.goto(f"{server.url}/sign-in", wait_until="networkidle")
    page.fill("input[type=text]", annotator.username)
    page.fill("input[type=password]", annotator.password)
    page.click("button[type=submit]")
    page.get_by_text(dataset_name).click()
    page.wait_for_url(f"**/dataset/{dataset_id}/annotation-mode**")
