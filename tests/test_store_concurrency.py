"""Many writer processes on one workspace: nothing lost, nothing duplicated, nothing partial.

Real processes (multiprocessing 'spawn', and the `synpref` command in subprocesses) write real
Parquet on disk. Processes are lined up with a Barrier, and a writer is stopped at its commit
point through the store's pause hook (a FIFO), never with sleeps.
"""

from __future__ import annotations

import fcntl
import glob
import multiprocessing as mp
import os
import select
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.store import Workspace
from pipeline.store_commit import COMMIT_LOCK, PAUSE_ENV, AppendPlan, KeyCache, Plan, commit

SCHEMA = pa.schema([("pair_id", pa.string()), ("writer", pa.int64())])
SPAWN = mp.get_context("spawn")
REPO = Path(__file__).resolve().parents[1]
HH_FILES = sorted({Path(p).parent.name: p for p in [
    *glob.glob(str(REPO / "examples/data/hh-rlhf/*/test.jsonl.gz")),
    *glob.glob("/work/shared/data/raw/hh-rlhf/*/test.jsonl.gz"),
]}.values())
SYNPREF = Path(sys.executable).parent / "synpref"


def rows(ids: list[str], writer: int = 0) -> pa.Table:
    return pa.table({"pair_id": ids, "writer": [writer] * len(ids)}, schema=SCHEMA)


def _keyed_writer(root: str, writer: int, rounds: int, barrier: Any, out: Any) -> None:
    ws = Workspace(root)
    written = 0
    for i in range(rounds):
        barrier.wait()  # both writers commit round i at the same moment
        shared = [f"shared-{i}-{j}" for j in range(4)]
        own = [f"w{writer}-{i}-{j}" for j in range(2)]
        written += ws.append("t", rows(shared + own, writer), unique_key="pair_id")
    out.put(written)


def run_keyed_writers(root: str, rounds: int) -> list[int]:
    """Two spawned processes, each making `rounds` keyed appends to table `t` in lockstep; the rows
    each reported it wrote."""
    barrier, out = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [SPAWN.Process(target=_keyed_writer, args=(root, w, rounds, barrier, out)) for w in (0, 1)]
    for p in procs:
        p.start()
    written = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return written


def test_two_processes_of_25_keyed_appends_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    root, rounds = str(tmp_path / "ws"), 25
    written = run_keyed_writers(root, rounds)
    ws = Workspace(root)
    ids = ws.read("t").column("pair_id").to_pylist()
    expected = {f"shared-{i}-{j}" for i in range(rounds) for j in range(4)} | {
        f"w{w}-{i}-{j}" for w in (0, 1) for i in range(rounds) for j in range(2)}
    assert len(ids) == len(set(ids)) == len(expected)  # no duplicates under the unique key
    assert set(ids) == expected  # no lost rows
    assert sum(written) == len(ids) == ws.row_count("t")  # what each writer reported it wrote landed
    manifest = ws.manifest("t")
    assert manifest["version"] == len(manifest["shards"])  # one version per commit that added rows
    assert not [p for p in ws.verify() if p.damaged]


def _ingest_file(root: str, path: str, barrier: Any) -> None:
    from pipeline.ingest import ingest_source
    from pipeline.sources import SourceSpec

    barrier.wait()
    ingest_source(Workspace(root), SourceSpec(path))


def _sequential_pool(tmp_path: Path, files: list[str]) -> set[str]:
    from pipeline.ingest import ingest_source
    from pipeline.sources import SourceSpec

    ws = Workspace(tmp_path / f"sequential-{uuid.uuid4().hex[:6]}")
    for f in files:
        ingest_source(ws, SourceSpec(f))
    return set(ws.read("pool", columns=["pair_id"]).column("pair_id").to_pylist())


@pytest.mark.skipif(len(HH_FILES) < 2, reason="needs HH-RLHF test files")
def test_concurrent_ingest_processes_keep_every_pair(tmp_path: Path) -> None:
    root = str(tmp_path / "ws")
    barrier = SPAWN.Barrier(len(HH_FILES))
    procs = [SPAWN.Process(target=_ingest_file, args=(root, f, barrier)) for f in HH_FILES]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    ids = Workspace(root).read("pool", columns=["pair_id"]).column("pair_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(ids) == _sequential_pool(tmp_path, HH_FILES)


def _synpref(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [str(SYNPREF)] if SYNPREF.exists() else [sys.executable, "-m", "flows.cli.main"]
    return subprocess.Popen([*command, *args], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.mark.skipif(len(HH_FILES) < 2, reason="needs HH-RLHF test files")
def test_concurrent_cli_ingests_end_with_every_pair_visible(tmp_path: Path) -> None:
    """Started at once, each `synpref ingest` either lands all its pairs or is refused with a clear
    message (the run lease); re-run, the refused ones complete the pool."""
    ws_path = str(tmp_path / "ws")
    runs = {f: _synpref("ingest", f, "-w", ws_path) for f in HH_FILES}
    refused = []
    for f, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        if proc.returncode != 0:
            assert "in use by another run" in err, err
            refused.append(f)
    for f in refused:
        proc = _synpref("ingest", f, "-w", ws_path)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    ids = Workspace(ws_path).read("pool", columns=["pair_id"]).column("pair_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(ids) == _sequential_pool(tmp_path, HH_FILES)


class Paused:
    """A writer process stopped at its commit point: parts written, lock held, manifest not."""

    def __init__(self, tmp_path: Path, table: str) -> None:
        self.fifo = str(tmp_path / f"pause-{uuid.uuid4().hex[:6]}")
        os.mkfifo(self.fifo)
        os.mkfifo(f"{self.fifo}.go")
        # Opened read-write, the FIFO never blocks us nor reads as closed before the writer comes.
        self._fd = os.open(self.fifo, os.O_RDWR)
        self.env = {PAUSE_ENV: f"{table}:{self.fifo}"}

    def next(self, alive: Any, timeout_s: float = 120.0) -> tuple[str, int]:
        """The writer's next report: ("waiting", pid) for the lock, or ("paused", pid) at its
        commit point. The 1 s select timeout only notices a writer that died."""
        waited = 0.0
        while waited < timeout_s:
            ready, _, _ = select.select([self._fd], [], [], 1.0)
            if ready:
                state, pid = os.read(self._fd, 64).decode().split("\n")[0].split()
                return state, int(pid)
            assert alive(), "the writer died before its commit point"
            waited += 1.0
        raise AssertionError("the writer never reached its commit point")

    def wait(self, alive: Any) -> int:
        """The pid of the writer, once paused at its commit point."""
        state, pid = self.next(alive)
        assert state == "paused", state
        return pid

    def resume(self) -> None:
        fd = os.open(f"{self.fifo}.go", os.O_RDWR)
        os.write(fd, b"go\n")
        os.close(fd)


def _paused_append(root: str, env: dict[str, str], ids: list[str]) -> None:
    os.environ.update(env)
    Workspace(root).append("t", rows(ids, 1), unique_key="pair_id")


def lock_is_free(ws: Workspace, table: str) -> bool:
    with open(ws.local_path(table, COMMIT_LOCK), "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def test_sigkill_before_the_manifest_commit_leaves_nothing_partial(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows([f"k{i}" for i in range(10)]), unique_key="pair_id")
    wanted = [f"k{i}" for i in range(50)]
    pause = Paused(tmp_path, "t")
    proc = SPAWN.Process(target=_paused_append, args=(ws.uri, pause.env, wanted))
    proc.start()
    assert pause.wait(proc.is_alive) == proc.pid
    assert ws.read("t").num_rows == 10  # its part is on disk, but no manifest lists it
    assert [p.kind for p in ws.verify()] == ["orphan"]
    assert not lock_is_free(ws, "t")  # it holds the table's commit lock
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    assert lock_is_free(ws, "t")  # the kernel released it with the process
    assert ws.read("t").column("pair_id").to_pylist() == wanted[:10]
    assert ws.append("t", rows(wanted, 2), unique_key="pair_id") == 40  # the re-run adds what is missing
    assert sorted(ws.read("t").column("pair_id").to_pylist()) == sorted(wanted)
    assert [p.kind for p in ws.verify()] == ["orphan"]  # the dead writer's part: harmless


def test_a_second_writer_waits_for_the_lock_and_commits_on_top(tmp_path: Path) -> None:
    """Mutual exclusion, step by step: B cannot commit while A holds the lock, and B's commit,
    made after A's, keeps A's rows (B re-read the manifest under the lock)."""
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]))
    first, second = Paused(tmp_path, "t"), Paused(tmp_path, "t")
    proc_a = SPAWN.Process(target=_paused_append, args=(ws.uri, first.env, ["b", "c"]))
    proc_a.start()
    first.wait(proc_a.is_alive)
    proc_b = SPAWN.Process(target=_paused_append, args=(ws.uri, second.env, ["c", "d"]))
    proc_b.start()
    assert second.next(proc_b.is_alive) == ("waiting", proc_b.pid)  # blocked on A's lock
    first.resume()
    proc_a.join(timeout=60)
    assert second.wait(proc_b.is_alive) == proc_b.pid  # B holds the lock only once A is done
    assert ws.read("t").column("pair_id").to_pylist() == ["a", "b", "c"]
    second.resume()
    proc_b.join(timeout=60)
    assert proc_a.exitcode == proc_b.exitcode == 0
    assert ws.read("t").column("pair_id").to_pylist() == ["a", "b", "c", "d"]  # c only once
    assert ws.manifest("t")["version"] == 3
    assert [p.kind for p in ws.verify()] == []  # B's part with c was rewritten under the lock


def test_readers_see_the_old_table_until_the_commit_lands(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]))
    pause = Paused(tmp_path, "t")
    proc = SPAWN.Process(target=_paused_append, args=(ws.uri, pause.env, ["a", "b", "c"]))
    proc.start()
    pause.wait(proc.is_alive)
    assert ws.read("t").column("pair_id").to_pylist() == ["a"]
    assert ws.scan("t").collect()["pair_id"].to_list() == ["a"]
    pause.resume()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert ws.read("t").column("pair_id").to_pylist() == ["a", "b", "c"]
    assert ws.manifest("t")["version"] == 2 and ws.verify() == []


@pytest.mark.skipif(len(HH_FILES) < 2, reason="needs HH-RLHF test files")
def test_killed_cli_ingest_adds_nothing_partial_and_a_rerun_adds_the_rest(tmp_path: Path) -> None:
    first, second = HH_FILES[:2]
    ws_path = str(tmp_path / "ws")
    proc = _synpref("ingest", first, "-w", ws_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    ws = Workspace(ws_path)
    before = set(ws.read("pool", columns=["pair_id"]).column("pair_id").to_pylist())
    pause = Paused(tmp_path, "pool")
    proc = _synpref("ingest", second, "-w", ws_path, env=pause.env)
    assert pause.wait(lambda: proc.poll() is None) == proc.pid
    proc.kill()
    proc.communicate(timeout=60)
    assert set(ws.read("pool", columns=["pair_id"]).column("pair_id").to_pylist()) == before
    assert lock_is_free(ws, "pool")
    proc = _synpref("ingest", second, "-w", ws_path)  # takes over the dead run's lease
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    ids = ws.read("pool", columns=["pair_id"]).column("pair_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(ids) == _sequential_pool(tmp_path, [first, second])
    assert not [p for p in ws.verify() if p.damaged]


def test_a_keyed_append_drops_keys_committed_after_it_read_the_table(tmp_path: Path) -> None:
    """The race of two keyed writers, step by step: the later commit re-checks under the lock."""
    ws = Workspace(tmp_path / "ws")
    ws.append("t", rows(["a"]), unique_key="pair_id")
    seen = ws.manifest("t")["shards"]
    mine = rows(["b", "c", "d"], 1)
    part = ws._write_shard("t", mine, 1).__dict__  # planned against `seen`: b, c, d are new
    ws.append("t", rows(["c", "e"], 2), unique_key="pair_id")  # another writer commits c first
    plan = AppendPlan(ws, "t", mine, part, seen, ["pair_id"], lambda t: ws._write_shard("t", t, 1).__dict__,
                      KeyCache())
    commit(ws, "t", plan)
    assert plan.written == 2
    table = ws.read("t")
    assert sorted((r["pair_id"], r["writer"]) for r in table.to_pylist()) == [
        ("a", 0), ("b", 1), ("c", 2), ("d", 1), ("e", 2)]
    assert ws.verify() == []  # the part written with c was replaced, not left behind


def test_an_optimistic_commit_that_lost_the_race_retries_on_the_new_version() -> None:
    """On filesystems without flock (memory://, object stores) a commit re-reads the version right
    before its rename and starts over when another writer got in first."""
    ws = Workspace(f"memory://optimistic-{uuid.uuid4().hex[:8]}")
    ws.append("t", rows(["a"]))
    part = ws._write_shard("t", rows(["b"], 1), 1).__dict__
    calls: list[int] = []

    def plan(current: dict[str, Any] | None) -> Plan:
        assert current is not None
        calls.append(current["version"])
        if len(calls) == 1:
            ws.append("t", rows(["x"], 2))  # lands while this commit is being prepared
        return Plan([*current["shards"], part], SCHEMA)

    commit(ws, "t", plan)
    assert calls == [1, 2]
    assert ws.read("t").column("pair_id").to_pylist() == ["a", "x", "b"]
    assert ws.manifest("t")["version"] == 3
