"""The fault matrix's storage cases: a disk that fills during a write, and damaged parts.

Both drive the real CLI in its own processes, as an operator would meet the fault: `synpref
ingest` on a workspace whose disk fills (a small tmpfs mounted for the case, or, where mounting
is not allowed, a file-size limit, which fails writes with EFBIG the same way), and `synpref
doctor` / `synpref export` on a workspace whose part files were altered, cut short or deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flows.bench.fault_runs import REPO, Outcome, compare_rows

CHUNK = 64 * 1024
SOURCES = ("hh-rlhf/harmless-base/test.jsonl.gz", "hh-rlhf/helpful-base/test.jsonl.gz")


def synpref(*args: str, limit_bytes: int | None = None,
            timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    """The synpref CLI in its own process; `limit_bytes` caps the size of any file it writes."""
    def cap() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_LOGGING_LEVEL="WARNING")
    env.pop("SYNPREF_FAILPOINT", None)
    return subprocess.run([sys.executable, "-m", "flows.cli.main", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=timeout_s, preexec_fn=cap)


def ingest(data: Path, source: str, workspace: Path, limit_bytes: int | None = None
           ) -> subprocess.CompletedProcess[str]:
    return synpref("ingest", str(data / source), "--format", "hh-rlhf", "--name", source.split("/test")[0],
                   "--license", "MIT", "--limit", "30", "-w", str(workspace), limit_bytes=limit_bytes)


@contextlib.contextmanager
def tmpfs(folder: Path, size_kib: int) -> Iterator[bool]:
    """A tmpfs of `size_kib` mounted on `folder` for the block; yields False (and mounts nothing)
    where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
    except FileNotFoundError:
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, headroom: int = 0) -> Path:
    """Fill `folder`'s filesystem with a ballast file, then give back `headroom` bytes of it."""
    ballast = folder / "ballast"
    with open(ballast, "ab") as fh:
        try:
            while True:
                fh.write(b"\0" * CHUNK)
                fh.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    size = ballast.stat().st_size
    os.truncate(ballast, max(0, size - size % 4096 - headroom))
    return ballast


def leftovers(workspace: Path) -> list[str]:
    """Temp files and a lease left in the workspace (there should be none after a failed command)."""
    return sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*")
                  if ".tmp-" in p.name or p.name == "_lease.json")


def disk_full(data: Path, folder: Path) -> Outcome:
    """Ingest into a workspace whose disk fills: each failed write says disk full and names its
    file, leaves no temp file or lease, the workspace stays readable, and once space is freed the
    same command completes with every row once."""
    from pipeline.store import Workspace

    started = time.perf_counter()
    outcome = Outcome("disk full during a write")
    expected = folder / "expected"  # the same two ingests on a roomy disk
    for source in SOURCES:
        synpref_ok(ingest(data, source, expected), outcome)
    with tmpfs(folder / "disk", 2048) as mounted:
        workspace = folder / "disk" / "ws"
        synpref_ok(ingest(data, SOURCES[0], workspace), outcome)
        messages: list[str] = []
        if mounted:
            for headroom in (0, 8192):  # no room at all (the lease cannot be written), then a little
                ballast = fill(folder / "disk", headroom)
                failed = ingest(data, SOURCES[1], workspace)
                messages.append(check_disk_full(failed, workspace, outcome))
                ballast.unlink()
        else:
            failed = ingest(data, SOURCES[1], workspace, limit_bytes=4096)
            messages.append(check_disk_full(failed, workspace, outcome))
        synpref_ok(ingest(data, SOURCES[1], workspace), outcome)
        got = Workspace(str(workspace)).read("pool", columns=["pair_id"]).column("pair_id").to_pylist()
        want = Workspace(str(expected)).read("pool", columns=["pair_id"]).column("pair_id").to_pylist()
        lost, dups, extra = compare_rows({"pool": [(k,) for k in want]}, {"pool": [(k,) for k in got]})
    outcome.rows_lost, outcome.duplicates, outcome.extra_rows = lost, dups, extra
    outcome.detail = {"filesystem": "tmpfs 2 MiB" if mounted else "RLIMIT_FSIZE 4 KiB", "messages": messages,
                      "pool_rows": len(got)}
    outcome.seconds = round(time.perf_counter() - started, 1)
    return outcome


def synpref_ok(done: subprocess.CompletedProcess[str], outcome: Outcome) -> None:
    outcome.runs += 1
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-500:]
        outcome.failures.append(f"{done.args[3:5]}: rc {done.returncode}: {output}")


def check_disk_full(failed: subprocess.CompletedProcess[str], workspace: Path, outcome: Outcome) -> str:
    """A command that hit the full disk: one clear message, nothing left behind, still readable."""
    outcome.runs += 1
    outcome.faults += 1
    text = " ".join((failed.stdout + failed.stderr).split())
    if failed.returncode != 1 or "disk full: could not write" not in text or str(workspace) not in text:
        outcome.failures.append(f"no clear disk-full error (rc {failed.returncode}): {text[-500:]}")
    if "Traceback" in text:
        outcome.failures.append(f"a traceback instead of one message: {text[-500:]}")
    if left := leftovers(workspace):
        outcome.failures.append(f"left behind after the failed write: {left}")
    doctor = synpref("doctor", "-w", str(workspace), "--json")
    if doctor.returncode != 0 or json.loads(doctor.stdout)["damaged"]:
        outcome.failures.append(f"doctor after the failed write: {doctor.stdout[-500:]}")
    start = text.find("disk full")
    return text[start:start + 300]


def damaged_part(data: Path, folder: Path) -> Outcome:
    """A part altered, cut short or deleted: doctor names it and what is wrong, and a command that
    reads the table (`export --pool`) refuses, naming the part, and writes nothing."""
    from pipeline.store import Workspace

    started = time.perf_counter()
    outcome = Outcome("damaged part file")
    damages: dict[str, Callable[[Path], None]] = {
        "sha256": lambda p: p.write_bytes(_flip(p.read_bytes())),
        "size": lambda p: p.write_bytes(p.read_bytes()[:-100]),
        "missing": lambda p: p.unlink(),
    }
    found: dict[str, Any] = {}
    for kind, damage in damages.items():
        workspace = folder / kind
        synpref_ok(ingest(data, SOURCES[0], workspace), outcome)
        part = Workspace(str(workspace)).manifest("pool")["shards"][0]["file"]
        damage(workspace / "pool" / part)
        outcome.faults += 1
        doctor = synpref("doctor", "-w", str(workspace), "--json")
        outcome.runs += 1
        problems = json.loads(doctor.stdout)["problems"] if doctor.stdout.strip().startswith("{") else []
        named = [p for p in problems if p["file"] == part and p["kind"] == kind and p["damaged"]]
        if doctor.returncode != 1 or not named:
            outcome.failures.append(f"{kind}: doctor did not name {part} (rc {doctor.returncode}): "
                                    f"{doctor.stdout[-300:]}")
        refused = synpref("export", "-w", str(workspace), "--pool", "--out", str(folder / f"{kind}-export"))
        outcome.runs += 1
        text = " ".join((refused.stdout + refused.stderr).split())
        if refused.returncode != 1 or part not in text or "Traceback" in text:
            outcome.failures.append(f"{kind}: export did not refuse the damaged table: {text[-300:]}")
        if (folder / f"{kind}-export").exists():
            outcome.failures.append(f"{kind}: export wrote output from a damaged table")
        found[kind] = {"doctor": named[0]["detail"] if named else None,
                       "export": text[text.find("error:"):][:240],
                       "export says damaged": f"table pool is damaged: part {part}" in text}
    outcome.detail = found
    outcome.seconds = round(time.perf_counter() - started, 1)
    return outcome


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
