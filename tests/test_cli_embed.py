"""`synpref embed | dedup --semantic | neighbors` end to end through the real CLI, on real pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA
from schemas.pair import compute_pair_id
from tests import flow_helpers

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
prefect_api = flow_helpers.prefect_api
INST = {"prompt": "<s>[INST] What is 2+2? Answer in one word. [/INST]",
        "chosen": "[/INST] Four. [bold]Really[/bold] \\", "rejected": "[INST] Five? [/INST] \\"}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


def table_rows(out: str) -> dict[str, list[str]]:
    """The rows of the tables in `out`, by their first cell."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture
def sample(shared_raw: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    """24 real UltraFeedback pairs, a light paraphrase of the first, and a pair holding [/INST]."""
    with open(shared_raw / "ultrafeedback" / "eval_clean.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(24), fh, strict=False)]
    near = {**rows[0], "prompt": "Please, " + rows[0]["prompt"].rstrip(".") + "!"}
    rows += [near, INST]
    path = tmp_path / "sample.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = tmp_path / "synpref.toml"
    config.write_text(f'workspace = "{tmp_path / "ws"}"\n[embed]\nbackend = "openvino"\n')
    code, out = run("ingest", "-c", str(config), str(path), "--name", "uf")
    assert code == 0, out
    return config, rows


def test_embed_dedup_neighbors_end_to_end(sample: tuple[Path, list[dict]]) -> None:
    config, rows = sample
    cfg = ["-c", str(config)]
    code, out = run("embed", *cfg)
    assert code == 0, out
    assert "no attributes in the workspace yet: embedding the conversation view only" in out
    assert table_rows(out)["conversation"][:4] == ["26", "26", "0", "openvino"]
    assert "conversation+attributes" not in table_rows(out)
    code, out = run("embed", *cfg)
    assert code == 0 and table_rows(out)["conversation"][:3] == ["26", "0", "26"]  # nothing new to embed

    code, out = run("dedup", "--semantic", *cfg)
    assert code == 0, out
    ws = Workspace(str(config.parent / "ws"))
    dropped = ws.read("dropped").to_pylist()
    first = compute_pair_id([{"role": "user", "content": rows[0]["prompt"]}], rows[0]["chosen"],
                            rows[0]["rejected"])
    near = compute_pair_id([{"role": "user", "content": rows[24]["prompt"]}], rows[24]["chosen"],
                           rows[24]["rejected"])
    assert [(d["pair_id"], d["kept_pair_id"]) for d in dropped] == [(near, first)]
    assert "semantic dedup" in out and "k-means cells" in table_rows(out)["26"][3]

    inst = compute_pair_id([{"role": "user", "content": INST["prompt"]}], INST["chosen"], INST["rejected"])
    code, out = run("neighbors", inst[:10], "-k", "3", *cfg)
    assert code == 0, out
    assert "[INST] What is 2+2? Answer in one word. [/INST]" in out
    assert "[/INST] Four. [bold]Really[/bold] \\" in out and "[INST] Five? [/INST] \\" in out
    assert "3 nearest pairs (conversation view, index flat)" in out
    code, out = run("neighbors", first[:12], "-k", "2", *cfg)
    assert code == 0, out
    assert f"{near[:12]}" in out and "(dropped)" in out  # the paraphrase is its nearest pair


def test_embed_adds_the_attributes_view_once_attributes_exist(sample: tuple[Path, list[dict]]) -> None:
    config, _ = sample
    ws = Workspace(str(config.parent / "ws"))
    inst = compute_pair_id([{"role": "user", "content": INST["prompt"]}], INST["chosen"], INST["rejected"])
    ws.append("attributes", pa.Table.from_pylist(
        [{"pair_id": inst, "task_category": "math", "objectivity": "objective", "controversiality": "low",
          "desired_attributes": ["correct"], "guideline": "Prefer the right sum.", "model": "heuristic"}],
        schema=ATTRIBUTES_SCHEMA), schema=ATTRIBUTES_SCHEMA)
    code, out = run("embed", "-c", str(config))
    assert code == 0, out
    assert "no attributes" not in out
    rows = table_rows(out)
    assert rows["conversation"][:3] == ["26", "26", "0"]
    assert rows["conversation+attributes"][:3] == ["26", "26", "0"]


def test_semantic_dedup_on_the_task_runner_drops_what_the_command_drops_in_process(
    prefect_api: str, sample: tuple[Path, list[dict]]
) -> None:
    config, rows = sample
    code, out = run("dedup", "--semantic", "-c", str(config), "--runner", "local", "--workers", "2")
    assert code == 0, out
    # embedding, sample, train, map, reduce and merge all ran as Prefect tasks of the dedup flow
    assert int(table_rows(out)["26"][4]) >= 5
    # the pair test_embed_dedup_neighbors_end_to_end sees the command drop in its own process
    first, near = (compute_pair_id([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"])
                   for r in (rows[0], rows[24]))
    dropped = Workspace(str(config.parent / "ws")).read("dropped").to_pylist()
    assert [(d["pair_id"], d["kept_pair_id"]) for d in dropped] == [(near, first)]
    code, out = run("dedup", "--semantic", "-c", str(config), "--runner", "spark")
    assert code != 0 and "--runner: choose one of local, dask, ray" in out
