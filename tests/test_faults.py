"""Faults at the store's write sites: failpoints, SIGKILL of a real curate at seeded writes, a full disk.

The long matrix (20 seeded kills and more) is `synpref bench faults`; these are its fast checks.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.bench.fault_cases import fill, leftovers, tmpfs
from flows.bench.fault_runs import KEYS, compare_rows, export_hashes, table_keys
from pipeline import failpoints
from pipeline.lease import LEASE_FILE, acquire, read_holder
from pipeline.store import Workspace, WorkspaceError
from tests import flow_helpers
from tests.flow_helpers import write_config

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api
REPO = Path(__file__).resolve().parent.parent


def rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"pair_id": [f"p{i:04d}" for i in range(start, start + n)],
                     "text": [f"row {i} " * 20 for i in range(start, start + n)]})


def run_python(code: str, env: dict[str, str] | None = None, limit_bytes: int | None = None
               ) -> subprocess.CompletedProcess[str]:
    def cap() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, preexec_fn=cap, timeout=300)


# -- failpoints -------------------------------------------------------------------------------


def test_failpoint_specs_parse_and_bad_ones_are_refused() -> None:
    armed = failpoints.parse("write:17")
    assert (armed.kind, armed.at, armed.count_to) == ("write", 17, None)
    assert failpoints.parse("manifest:2").kind == "manifest"
    assert failpoints.parse("lease:1").kind == "lease"
    counting = failpoints.parse("count:/tmp/events.log")
    assert (counting.kind, counting.at, counting.count_to) == ("write", 0, "/tmp/events.log")
    for bad in ("write:0", "write:-1", "write:x", "writes:3", "count:", "part"):
        with pytest.raises(ValueError, match="SYNPREF_FAILPOINT"):
            failpoints.parse(bad)
    assert [failpoints.kind_of(p) for p in ("pool/part-000001-ab.parquet", "pool/_manifest.json",
                                            "rounds/1/steps/rm.json", "_lease.json", "_lease.takeover")] \
        == ["part", "manifest", "file", "lease", "lease"]


def test_counting_mode_numbers_every_durable_write_of_the_store(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    ws = Workspace(tmp_path / "ws")
    failpoints.configure(f"count:{log}")
    try:
        with acquire(ws, "test"):  # lease writes are numbered apart: not in the log
            ws.write_json("steps/a.json", {"a": 1})
            ws.append("pool", rows(3), unique_key="pair_id")
            ws.append("pool", rows(3), unique_key="pair_id")  # nothing new: no part, no manifest
            ws.replace("gold", rows(2))
    finally:
        failpoints.configure(None)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [int(n) for n, _, _ in lines] == list(range(1, len(lines) + 1))
    assert [(kind, path.split("/")[0]) for _, kind, path in lines] == [
        ("file", "steps"), ("part", "pool"), ("manifest", "pool"), ("part", "gold"), ("manifest", "gold")]
    assert failpoints.count_events(str(log)) == 5
    assert failpoints.count_events(str(tmp_path / "absent.log")) == 0


def test_a_kill_at_write_n_leaves_the_earlier_writes_and_one_orphan_temp(tmp_path: Path) -> None:
    done = run_python(f"""
        from pipeline.store import Workspace, WorkspaceError
        ws = Workspace({str(tmp_path / "ws")!r})
        for i in range(1, 6):
            ws.write_json(f"files/{{i}}.json", {{"i": i}})
    """, env={"SYNPREF_FAILPOINT": "write:3"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    names = sorted(p.name for p in (tmp_path / "ws" / "files").iterdir())
    assert names[:2] == ["1.json", "2.json"] and len(names) == 3
    assert names[2].startswith("3.json.tmp-")  # the bytes were written, the rename never happened
    assert json.loads((tmp_path / "ws" / "files" / names[2]).read_text()) == {"i": 3}


def test_a_kill_between_part_and_manifest_leaves_the_table_as_committed(tmp_path: Path) -> None:
    done = run_python(f"""
        import pyarrow as pa
        from pipeline.store import Workspace, WorkspaceError
        ws = Workspace({str(tmp_path / "ws")!r})
        for start in (0, 10, 20):
            ids = [f"p{{i}}" for i in range(start, start + 10)]
            ws.append("pool", pa.table({{"pair_id": ids}}), unique_key="pair_id")
    """, env={"SYNPREF_FAILPOINT": "manifest:2"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    ws = Workspace(tmp_path / "ws")
    assert ws.read("pool").column("pair_id").to_pylist() == [f"p{i}" for i in range(10)]
    problems = ws.verify()
    assert [p.kind for p in problems] == ["orphan", "orphan"]  # the second part, the manifest's temp
    assert not any(p.damaged for p in problems)
    ws.append("pool", pa.table({"pair_id": [f"p{i}" for i in range(20)]}), unique_key="pair_id")
    assert ws.row_count("pool") == 20


def test_a_run_killed_holding_the_lease_is_taken_over(tmp_path: Path) -> None:
    done = run_python(f"""
        from pipeline.lease import acquire
        from pipeline.store import Workspace, WorkspaceError
        acquire(Workspace({str(tmp_path / "ws")!r}), "killed run")
    """, env={"SYNPREF_FAILPOINT": "lease:1"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    ws = Workspace(tmp_path / "ws")
    dead = read_holder(ws)
    assert dead is not None and dead.command == "killed run"
    with acquire(ws, "next run") as lease:
        assert lease.took_over == dead
    assert not ws.exists(LEASE_FILE)


# -- a full disk --------------------------------------------------------------------------------


def test_a_file_size_limit_fails_the_write_as_disk_full_and_leaves_nothing(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes writes past the limit fail with EFBIG, as a full disk fails them with ENOSPC."""
    done = run_python(f"""
        import json, os
        import pyarrow as pa
        from pipeline.store import Workspace, WorkspaceError
        ws = Workspace({str(tmp_path / "ws")!r})
        ws.append("pool", pa.table({{"pair_id": ["a", "b"]}}), unique_key="pair_id")
        big = pa.table({{"pair_id": [os.urandom(32).hex() for _ in range(2000)]}})  # ~70 KB of part
        try:
            ws.append("pool", big, unique_key="pair_id")
            print(json.dumps({{"error": None}}))
        except WorkspaceError as exc:
            print(json.dumps({{"error": str(exc)}}))
    """, limit_bytes=16 * 1024)
    assert done.returncode == 0, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error.startswith(f"disk full: could not write {tmp_path / 'ws' / 'pool'}/part-")
    assert "File too large" in error and "run the command again" in error
    ws = Workspace(tmp_path / "ws")
    assert leftovers(tmp_path / "ws") == []
    assert ws.verify() == [] and ws.read("pool").column("pair_id").to_pylist() == ["a", "b"]


def cli(*args: str) -> tuple[int, str]:
    from flows.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_a_workspace_on_a_full_disk_stays_readable_and_the_rerun_completes(
        shared_raw: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with tmpfs(disk, 2048) as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs is not allowed here (the file-size-limit test covers the error)")
        ws_path = disk / "ws"

        def ingest(split: str) -> tuple[int, str]:
            return cli("ingest", str(shared_raw / "hh-rlhf" / split / "test.jsonl.gz"), "--format", "hh-rlhf",
                       "--name", split, "--limit", "30", "-w", str(ws_path))

        def assert_readable_as_before() -> None:
            assert leftovers(ws_path) == []  # no temp file, no lease left to block the next run
            ws = Workspace(ws_path)
            assert ws.verify() == [] and ws.read("pool").column("pair_id").to_pylist() == first
            assert cli("doctor", "-w", str(ws_path))[0] == 0

        assert ingest("harmless-base")[0] == 0
        first = Workspace(ws_path).read("pool").column("pair_id").to_pylist()
        ballast = fill(disk)  # no room at all: the command cannot even take the lease
        code, out = ingest("helpful-base")
        assert code == 1 and "Traceback" not in out, out
        assert f"disk full: could not write {ws_path}/{LEASE_FILE} (" in out
        assert "No space left on device" in out
        assert_readable_as_before()
        ballast.unlink()
        ballast = fill(disk, 8192)  # room for small files, not for a part or a streamed file
        ws = Workspace(ws_path)
        big = pa.table({"pair_id": [os.urandom(32).hex() for _ in range(2000)]})
        with pytest.raises(WorkspaceError, match=f"disk full: could not write {ws_path}/notes/part-"):
            ws.append("notes", big)
        streamed = f"disk full: could not write {ws_path}/scratch/run.bin " r"\(No space left on device\)"
        with pytest.raises(WorkspaceError, match=streamed), ws.open_write("scratch/run.bin") as fh:
            for _ in range(64):
                fh.write(os.urandom(4096))
        assert not ws.has_table("notes")
        assert_readable_as_before()
        code, out = ingest("helpful-base")  # the lease fits; the ingest's staged batches do not
        assert code == 1 and "Traceback" not in out, out
        assert f"disk full: could not write {ws_path}/" in out and "No space left on device" in out
        assert_readable_as_before()
        ballast.unlink()
        assert ingest("helpful-base")[0] == 0
        pool = Workspace(ws_path).read("pool").column("pair_id").to_pylist()
        assert len(pool) == len(set(pool)) > len(first) and set(first) <= set(pool)


def test_a_streamed_write_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    log = tmp_path / "events.log"
    failpoints.configure(f"count:{log}")
    try:
        with ws.open_write("scratch/a.bin") as fh:
            fh.write(b"abc")
            assert not ws.exists("scratch/a.bin")  # not visible until the block ends
        with pytest.raises(RuntimeError, match="interrupted"), ws.open_write("scratch/b.bin") as fh:
            fh.write(b"partial")
            raise RuntimeError("interrupted")
    finally:
        failpoints.configure(None)
    assert ws.read_bytes("scratch/a.bin") == b"abc"
    assert ws.listdir("scratch") == ["a.bin"]
    assert log.read_text().split() == ["1", "file", "scratch/a.bin"]


# -- SIGKILL at seeded write events of a real curate, then resumed -------------------------------


def curate_command(config: Path, api_url: str, home: Path, failpoint: str | None,
                   *extra: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="WARNING")
    env.pop(failpoints.ENV, None)
    if failpoint:
        env[failpoints.ENV] = failpoint
    return [sys.executable, "-m", "flows.cli.main", "curate", "--config", str(config), *extra], env


def start_curate(config: Path, api_url: str, home: Path, failpoint: str | None,
                 *extra: str) -> subprocess.CompletedProcess[str]:
    command, env = curate_command(config, api_url, home, failpoint, *extra)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def kill_when_written(config: Path, api_url: str, home: Path, marker: Path,
                      timeout_s: float = 1200.0) -> None:
    """Start a curate and SIGKILL it as soon as `marker` exists (the run must not finish first)."""
    command, env = curate_command(config, api_url, home, None, "--quiet")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not marker.exists():  # polls a file the run writes; the kill is what is tested
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"run ended (rc {proc.returncode}) before {marker} appeared:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{marker} did not appear within {timeout_s} s")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_export(
        curated_run: dict[str, Any], prefect_api: str, shared_raw: Path, tmp_path: Path) -> None:
    # The reference is a copy: exporting it must not touch the session's shared run.
    reference = tmp_path / "reference"
    shutil.copytree(curated_run["config"].workspace, reference)
    config = write_config(shared_raw, tmp_path, "killed")
    ws_path = tmp_path / "killed"
    # Three kills in a row, each at a seeded write of what the run had left to do (a part, a
    # manifest or a marker written, not yet renamed into place; these land in ingest and clean)...
    points = sorted(random.Random(13).sample(range(1, 60), 3))
    for point in points:
        killed = start_curate(config, prefect_api, tmp_path / "prefect", f"write:{point}", "--quiet")
        assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
        ws = Workspace(ws_path)
        assert not [p for p in ws.verify() if p.damaged]  # nothing partial is visible
    # ...then mid stage 1 (round 1's RM trained) and mid stage 2 (the gold RM has scored).
    for marker in ("rounds/1/steps/rm.json", "stage2/steps/score-gold.json"):
        kill_when_written(config, prefect_api, tmp_path / "prefect", ws_path / marker)
        assert not [p for p in Workspace(ws_path).verify() if p.damaged]
    assert not (ws_path / "stage2" / "summary.json").exists()
    final = start_curate(config, prefect_api, tmp_path / "prefect", None)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert "Rounds" in final.stdout and "report:" in final.stdout
    assert compare_rows(table_keys(reference), table_keys(ws_path)) == (0, 0, 0)
    assert set(table_keys(ws_path)) == set(KEYS)
    resumed = export_hashes(ws_path, tmp_path / "resumed-export")
    assert resumed == export_hashes(reference, tmp_path / "reference-export")
    assert any(name.startswith("curated/") for name in resumed) and "README.md" in resumed
