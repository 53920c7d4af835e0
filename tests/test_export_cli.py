"""`synpref export`: the loop's curation by default, the raw pool only when asked, the Hub push."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from flows import export as exporting  # Prefect loads here, not inside a CliRunner invocation
from flows.cli.main import app
from flows.loop_state import add_labels, label_rows
from pipeline.store import Workspace
from tests import flow_helpers

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
SECRET = "hf_test_secret_token_0123456789"
prefect_api = flow_helpers.prefect_api


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={**ENV, **(env or {})})
    return result.exit_code, result.output


@pytest.fixture
def looped(shared_raw: Path, tmp_path: Path) -> dict[str, Any]:
    """40 ingested pairs and a finished round: 5 gold labels (2 flipped), 10 silver (3 flipped)."""
    ws_dir = tmp_path / "ws"
    config = tmp_path / "synpref.toml"
    config.write_text(f'workspace = "{ws_dir}"\n[export]\nshard_rows = 4\n')
    code, out = run("ingest", "-c", str(config), str(shared_raw / "ultrafeedback" / "eval_clean.jsonl"),
                    "--license", "MIT", "--name", "ultrafeedback", "--limit", "40")
    assert code == 0, out
    ws = Workspace(ws_dir)
    ids = sorted(pl.from_arrow(ws.read("pool"))["pair_id"].to_list())  # type: ignore[index]
    gold = ["rejected", "chosen", "rejected", "chosen", "chosen"]
    add_labels(ws, "gold", label_rows(ids[:5], gold, "human", 1))
    add_labels(ws, "silver", label_rows(ids[5:15], ["rejected"] * 3 + ["chosen"] * 7, "judges", 1))
    ws.write_json("rounds/1/summary.json", {"round": 1, "counts": {"gold": 5, "silver": 10},
                                            "gold_accuracy": 0.6})
    return {"config": config, "ws": ws, "ids": ids}


def test_export_after_a_loop_writes_the_curation(looped: dict[str, Any], tmp_path: Path) -> None:
    code, out = run("export", "-c", str(looped["config"]), "--out", str(tmp_path / "out"))
    assert code == 0, out
    assert "curated selection of the loop: 15 pairs, 5 relabeled in 4 shard(s)" in out
    ws = looped["ws"]
    curated = pl.from_arrow(ws.read("curated"))
    assert curated.height == 15 and int(curated["flipped"].sum()) == 5  # type: ignore[index]
    assert len(ws.manifest("curated")["shards"]) == 4  # the config's export.shard_rows
    assert len(list((tmp_path / "out" / "data").glob("train-*.parquet"))) == 4
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlicense:\n- \"mit\"\n")
    assert '- "ultrafeedback"' in card and "configs:" in card and "path: data/train-*.parquet" in card
    assert "1 stage-1 round(s)" in card and "5 of 15 pairs are relabeled" in card


def test_export_on_the_task_runner_writes_the_files_of_the_export_in_process(
    prefect_api: str, looped: dict[str, Any], tmp_path: Path
) -> None:
    import hashlib

    def files(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    config = str(looped["config"])
    assert run("export", "-c", config, "--out", str(tmp_path / "here"))[0] == 0
    here = [s["sha256"] for s in looped["ws"].manifest("curated")["shards"]]
    code, out = run("export", "-c", config, "--out", str(tmp_path / "tasks"), "--runner", "local",
                    "--workers", "2")
    assert code == 0, out
    assert "curated selection of the loop: 15 pairs, 5 relabeled in 4 shard(s)" in out
    assert files(tmp_path / "tasks") == files(tmp_path / "here") and len(files(tmp_path / "here")) == 5
    assert [s["sha256"] for s in looped["ws"].manifest("curated")["shards"]] == here
    code, out = run("export", "-c", config, "--runner", "spark")
    assert code != 0 and "--runner: choose one of local, dask, ray" in out


def test_pool_export_never_replaces_the_curation(looped: dict[str, Any], tmp_path: Path) -> None:
    ws = looped["ws"]
    assert run("export", "-c", str(looped["config"]))[0] == 0
    before = ws.manifest("curated")
    code, out = run("export", "-c", str(looped["config"]), "--pool", "--out", "memory://synpref-test/pool")
    assert code == 0, out
    assert "raw active pool: 40 pairs in 10 shard(s)" in out
    assert ws.manifest("curated") == before
    import fsspec

    fs = fsspec.filesystem("memory")
    assert len(fs.glob("/synpref-test/pool/data/*.parquet")) == 10
    assert "The raw active pool" in fs.cat("/synpref-test/pool/README.md").decode()
    code, out = run("export", "-c", str(looped["config"]), "--pool")
    assert code == 1 and "pass --out" in out
    assert ws.manifest("curated") == before


def test_export_without_a_loop_asks_for_pool(shared_raw: Path, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    source = str(shared_raw / "ultrafeedback" / "eval_clean.jsonl")
    assert run("ingest", "-w", ws, source, "--limit", "5")[0] == 0
    code, out = run("export", "-w", ws, "--out", str(tmp_path / "out"))
    assert code == 1
    assert "no loop has run" in out and "--pool" in " ".join(out.split())
    assert not Workspace(ws).has_table("curated") and not (tmp_path / "out").exists()


def test_push_to_hub_builds_dataset_and_card_and_keeps_the_token_secret(
    looped: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    pushed: dict[str, Any] = {}

    def save_locally(dataset: Any, card: str, repo_id: str, private: bool, token: str) -> None:
        """Stands in for the Hub upload: the same DatasetDict and card, saved to disk."""
        dataset.save_to_disk(str(tmp_path / "hub"))
        (tmp_path / "hub" / "README.md").write_text(card)
        pushed.update(repo_id=repo_id, private=private, token=token)

    monkeypatch.setattr(exporting, "hub_upload", save_locally)
    out = tmp_path / "out"
    code, text = run("export", "-c", str(looped["config"]), "--out", str(out), "--push-to-hub", "org/prefs",
                     "--private", env={"HF_TOKEN": SECRET})
    assert code == 0, text
    assert pushed == {"repo_id": "org/prefs", "private": True, "token": SECRET}
    assert "pushed to the Hugging Face Hub: org/prefs (private)" in text
    hub = datasets.load_from_disk(str(tmp_path / "hub"))
    assert list(hub) == ["train"] and hub["train"].num_rows == 15
    assert sum(hub["train"]["flipped"]) == 5
    assert hub["train"][0]["chosen"][0]["role"] == "assistant"
    assert (tmp_path / "hub" / "README.md").read_text() == (out / "README.md").read_text()
    assert SECRET not in text
    for root in (looped["ws"].root, str(out), str(tmp_path / "hub")):
        for path in Path(root).rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


def test_push_to_hub_needs_the_token_in_the_environment(
    looped: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporting, "hub_upload", lambda *a: pytest.fail("uploaded without a token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, out = run("export", "-c", str(looped["config"]), "--push-to-hub", "org/prefs")
    assert code == 1 and "HF_TOKEN" in out and "Traceback" not in out
