"""The run lease: a second writer is refused with the holder named; a dead holder's lease is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from pipeline.lease import LEASE_FILE, WorkspaceBusy, acquire, is_stale, read_holder
from pipeline.store import Workspace

REPO = Path(__file__).resolve().parent.parent
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
HOLD = """
import sys
from pipeline.lease import acquire
from pipeline.store import Workspace
lease = acquire(Workspace(sys.argv[1]), "synpref ingest data/*.jsonl")
print("held", flush=True)
sys.stdin.read()  # hold until the test closes stdin
lease.release()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A real second process that holds the workspace's lease until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "ws")], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)


def test_a_second_writer_is_refused_with_the_holder_named(
    holder: subprocess.Popen[str], shared_raw: Path, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    source = str(shared_raw / "ultrafeedback" / "eval_clean.jsonl")
    result = CliRunner().invoke(app, ["ingest", "-w", str(ws), source, "--limit", "5"], env=ENV)
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"pid {holder.pid} on {socket.gethostname()}" in text
    assert "synpref ingest data/*.jsonl" in text and "started 20" in text
    assert "Traceback" not in result.output
    assert not Workspace(ws).has_table("pool")  # refused before writing anything
    # Readers are not writers: status still works while the run holds the lease.
    status = CliRunner().invoke(app, ["status", "-w", str(ws)], env=ENV)
    assert status.exit_code == 0 and f"in use by a writing run: pid {holder.pid}" in status.output

    holder.stdin.close()  # type: ignore[union-attr]
    assert holder.wait(timeout=30) == 0
    assert not (ws / LEASE_FILE).exists()
    result = CliRunner().invoke(app, ["ingest", "-w", str(ws), source, "--limit", "5"], env=ENV)
    assert result.exit_code == 0, result.output
    assert Workspace(ws).row_count("pool") == 5
    assert not (ws / LEASE_FILE).exists()  # released when the command returned


def test_a_dead_holders_lease_is_taken_over(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    (tmp_path / "ws" / LEASE_FILE).write_text(json.dumps({
        "host": socket.gethostname(), "pid": dead.pid, "started": now, "command": "synpref curate",
        "token": "old", "heartbeat": now}))
    stale = read_holder(ws)
    assert stale is not None and is_stale(stale)
    with acquire(ws, "synpref clean") as lease:
        assert lease.took_over is not None and lease.took_over.pid == dead.pid
        current = read_holder(ws)
        assert current is not None and current.pid == os.getpid() and current.command == "synpref clean"
    assert read_holder(ws) is None


def test_an_old_heartbeat_from_another_host_is_stale_a_fresh_one_is_not(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    now = time.time()
    lease = {"host": "other-host", "pid": 1, "started": now - 7200, "command": "synpref curate",
             "token": "t"}
    (tmp_path / "ws" / LEASE_FILE).write_text(json.dumps({**lease, "heartbeat": now}))
    with pytest.raises(WorkspaceBusy, match="pid 1 on other-host"):
        acquire(ws, "synpref clean")
    (tmp_path / "ws" / LEASE_FILE).write_text(json.dumps({**lease, "heartbeat": now - 3600}))
    with acquire(ws, "synpref clean", stale_after_s=600) as taken:
        assert taken.took_over is not None and taken.took_over.host == "other-host"


def test_the_lease_is_reentrant_within_a_process(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    with acquire(ws, "synpref curate") as outer:
        with acquire(Workspace(tmp_path / "ws"), "curate flow") as inner:
            assert inner is outer
        assert read_holder(ws) is not None  # the inner release keeps the outer's lease
    assert read_holder(ws) is None


def test_the_heartbeat_refreshes_the_lease_but_never_a_new_holders(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    with acquire(ws, "synpref curate") as lease:
        first = read_holder(ws)
        assert first is not None
        assert lease.beat()
        refreshed = read_holder(ws)
        assert refreshed is not None and refreshed.token == first.token
        assert refreshed.heartbeat >= first.heartbeat and refreshed.started == first.started
        # Another run took the lease over (this one looked dead): the heartbeat stops, untouched.
        taken = {**json.loads((tmp_path / "ws" / LEASE_FILE).read_text()), "token": "new", "pid": 1}
        (tmp_path / "ws" / LEASE_FILE).write_text(json.dumps(taken))
        assert not lease.beat()
        assert read_holder(ws).token == "new"  # type: ignore[union-attr]
    assert read_holder(ws).token == "new"  # type: ignore[union-attr]  # release leaves it alone
