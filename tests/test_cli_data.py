"""`synpref ingest | clean | status | export` end to end through the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows import export as _loads_prefect  # noqa: F401  (see below)
from flows.cli.data import parse_column_map
from flows.cli.main import app
from pipeline.store import Workspace

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
# `synpref export` imports Prefect, whose log handler keeps the stderr it first saw: imported
# here, that is pytest's, not the stream of one CliRunner invocation that closes after it.


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


def test_ingest_clean_status_export_end_to_end(shared_raw: Path, tmp_path: Path) -> None:
    ws = str(tmp_path / "ws")
    natural = str(shared_raw / "llmbar" / "Dataset" / "LLMBar" / "Natural" / "dataset.json")
    code, out = run("ingest", "-w", ws, str(shared_raw / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"),
                    str(shared_raw / "llmbar" / "Dataset" / "LLMBar"), "--license", "MIT")
    assert code == 0, out
    assert "helpful-base/test" in out and "2348" in out and "LLMBar" in out and "419" in out
    assert Workspace(ws).row_count("pool") == 2348 + 419
    code, out = run("ingest", "-w", ws, str(shared_raw / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"))
    assert code == 0 and Workspace(ws).row_count("pool") == 2348 + 419  # re-ingest adds nothing
    code, out = run("clean", "-w", ws, "--benchmark", natural)
    assert code == 0, out
    assert "exact-dedup" in out and "decontamination" in out
    # progress bars over the pool's rows, left on screen in their final state when piped
    assert re.search(r"exact dedup .*━ 2767/2767 pairs", out)
    assert re.search(r"decontamination against 1 benchmark file\(s\) .*━ 2767/2767 pairs", out)
    code, out = run("status", "-w", ws)
    assert code == 0, out
    for expected in ("pool", "quarantine", "dropped", "helpful-base/test", "empty response",
                     "chosen and rejected are identical", "benchmark-overlap"):
        assert expected in out
    dropped = Workspace(ws).read("dropped").to_pylist()
    assert sum(d["stage"] == "decontamination" for d in dropped) == 72
    from flows.cli.data import status_tables

    tables = status_tables(Workspace(ws))
    per_source = next(rows for title, _, rows in tables if title.startswith("Pairs per"))
    assert sum(r[2] for r in per_source) == 2348 + 419 and sum(r[3] for r in per_source) == 2348 + 419 - 72
    code, out = run("export", "-w", ws, "--pool", "--out", str(tmp_path / "export"))
    assert code == 0, out
    assert f"raw active pool: {2348 + 419 - 72} pairs in 1 shard(s)" in out
    assert not Workspace(ws).has_table("curated")  # the raw pool never takes the curation's place
    assert re.search(r"export shards .*━ 2695/2695 pairs", out)
    assert (tmp_path / "export" / "README.md").exists()


def test_ingest_from_the_config_sources(shared_raw: Path, tmp_path: Path) -> None:
    config = tmp_path / "synpref.toml"
    config.write_text(
        'workspace = "./ws"\n'
        "[[sources]]\n"
        f'path = "{shared_raw / "offsetbias" / "biasbench.json"}"\n'
        'name = "offsetbias"\nlicense = "MIT"\n'
        "[clean]\n"
        f'benchmarks = ["{shared_raw / "offsetbias" / "biasbench.json"}"]\n'
        "[export]\nshard_rows = 30\n"
    )
    code, out = run("ingest", "-c", str(config))
    assert code == 0, out
    ws = Workspace(tmp_path / "ws")
    assert ws.row_count("pool") == 80
    code, out = run("clean", "-c", str(config))
    assert code == 0, out
    contaminated = [d for d in ws.read("dropped").to_pylist() if d["stage"] == "decontamination"]
    assert 0 < len(contaminated) <= 80
    code, out = run("export", "-c", str(config), "--pool", "--out", str(tmp_path / "export"))
    assert code == 0, out
    kept = 80 - len(contaminated)
    assert f"raw active pool: {kept} pairs in {-(-kept // 30)} shard(s)" in out  # the config's shard size
    assert len(list((tmp_path / "export" / "data").glob("train-*.parquet"))) == -(-kept // 30)


def test_generic_column_map_and_label_source_flags(tmp_path: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"q": f"question {i}", "good": "yes", "bad": "no"}) + "\n" for i in range(3)]
    data.write_text("".join(lines))
    code, out = run("ingest", "-w", str(tmp_path / "ws"), str(data), "--format", "generic",
                    "--column-map", "prompt=q", "--column-map", '{"chosen": "good", "rejected": "bad"}',
                    "--label-source", "ai", "--name", "mine")
    assert code == 0, out
    pool = Workspace(tmp_path / "ws").read("pool").to_pylist()
    assert {(r["source"], r["label_source"]) for r in pool} == {("mine", "ai")}
    assert parse_column_map(["prompt = q"]) == {"prompt": "q"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "{missing}"], "file not found: "),
        (["ingest", "{odd}"], "cannot tell the format"),
        (["ingest", "{odd}", "--format", "weird"], "unknown format 'weird'"),
        (["ingest", "{odd}", "--column-map", "prompt"], "expected FIELD=COLUMN"),
        (["ingest", "{odd}", "--label-source", "robot"], "label_source must be human, ai or unknown"),
        (["ingest"], "nothing to ingest"),
        (["clean"], "has no pool yet"),
        (["export", "--out", "{tmp}/x"], "has no pool yet"),
    ],
)
def test_bad_input_is_one_clear_error_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"text": "x"}\n')
    filled = [a.format(missing=tmp_path / "nope.jsonl", odd=odd, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(app, [*filled, "-w", str(tmp_path / "ws")], env=ENV)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not Workspace(tmp_path / "ws").has_table("pool")


def test_clean_needs_existing_benchmark_files(tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert run("ingest", "-w", str(tmp_path / "ws"), str(data))[0] == 0
    code, out = run("clean", "-w", str(tmp_path / "ws"), "-b", str(tmp_path / "missing.json"))
    assert code == 1 and "benchmark file not found" in out


@pytest.mark.parametrize("command", ["ingest", "clean", "status", "export"])
def test_help_says_what_each_command_does(command: str) -> None:
    code, out = run(command, "--help")
    assert code == 0
    first = {"ingest": "Read preference pairs into the workspace pool", "clean": "Exact dedup of the pool",
             "status": "Show the workspace", "export": "Export the loop's curated selection"}[command]
    assert first in " ".join(out.split())


def test_console_script_exit_code_on_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    synpref = Path(sys.executable).parent / "synpref"
    proc = subprocess.run([str(synpref), "ingest", str(bad), "-w", str(tmp_path / "ws")],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", **ENV})
    assert proc.returncode == 1
    assert "bad.json: not valid JSON" in " ".join(proc.stderr.split())
