"""Failpoints: crash the process at a chosen durable write, reproducibly.

A crash test that kills a run "after some seconds" hits a different instruction every time and
rarely the window that matters (a part written, its manifest not yet). Databases name their
crash sites instead (FoundationDB's and TiKV's failpoints, SQLite's crash tests); this module
does the same for the workspace store. Every durable write of the store (a part file, a table
manifest, a JSON file such as a step marker) is one numbered event, in the order the process
makes them, and `SYNPREF_FAILPOINT` picks one:

- `SYNPREF_FAILPOINT=write:17` SIGKILLs the process at its 17th write event, after the file's
  bytes are on disk under a temporary name and before the rename that would publish them: the
  16 writes before it landed, the 17th left an orphan temp file, as a killed process would.
  `part:3`, `manifest:5` or `file:2` count only that kind of event.
- `SYNPREF_FAILPOINT=lease:1` kills the process right after it created the workspace's lease
  (`_lease.json`, holding its own pid): the next run must take over a dead holder's lease. Lease
  writes are numbered apart from `write` because the lease's heartbeat rewrites it on a timer;
  counted with the others, it would shift every later event number from one run to the next.
- `SYNPREF_FAILPOINT=count:PATH` kills nothing and appends one line per event (`N KIND FILE`,
  lease events excluded) to PATH, so a harness learns how many crash sites an uninterrupted run
  has and draws among them.

Threads of one process (parallel shard tasks) share one counter, so the count of a run is fixed
even where the order of its events is not. Worker processes (Dask, Ray) count their own events.
Unset, an event costs one global lookup. The variable is read when the module is imported (each
process, subprocesses included, reads its own environment); `configure` sets it again in-process.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

ENV = "SYNPREF_FAILPOINT"
KINDS = ("part", "manifest", "file", "lease")
LEASE_FILES = ("_lease.json", "_lease.takeover")


@dataclass
class _Armed:
    kind: str  # "write" (every event but lease ones) or one of KINDS
    at: int  # kill at this event number; 0 in counting mode
    count_to: str | None  # counting mode: the log file
    seen: int = 0


_armed: _Armed | None = None
_lock = threading.Lock()


def configure(spec: str | None) -> None:
    """Arm (or, with None or "", disarm) the failpoint from a `SYNPREF_FAILPOINT` value."""
    global _armed
    _armed = parse(spec) if spec else None


def parse(spec: str) -> _Armed:
    """`KIND:N` (KIND: write, part, manifest, file) or `count:PATH`; ValueError otherwise."""
    kind, _, arg = spec.partition(":")
    if kind == "count" and arg:
        return _Armed("write", 0, arg)
    if kind in ("write", *KINDS) and arg.isdigit() and int(arg) > 0:
        return _Armed(kind, int(arg), None)
    raise ValueError(f"{ENV}={spec!r}: expected KIND:N (KIND one of write, {', '.join(KINDS)}; "
                     f"N >= 1) or count:PATH")


def kind_of(relpath: str) -> str:
    """The event kind of a store write to `relpath`."""
    if relpath.rsplit("/", 1)[-1] in LEASE_FILES:
        return "lease"
    if relpath.endswith(".parquet"):
        return "part"
    if relpath.endswith("_manifest.json"):
        return "manifest"
    return "file"


def write_event(relpath: str) -> None:
    """One durable write is about to be published (its bytes written, not yet renamed); for the
    lease, which is created in place, the file was just created and written."""
    if _armed is None:
        return
    _hit(_armed, relpath)


def _hit(armed: _Armed, relpath: str) -> None:
    kind = kind_of(relpath)
    if armed.kind != kind and (armed.kind != "write" or kind == "lease"):
        return
    with _lock:  # parallel shard tasks are threads: one number per event
        armed.seen += 1
        n = armed.seen
        if armed.count_to is not None:
            with open(armed.count_to, "a") as fh:
                fh.write(f"{n} {kind} {relpath}\n")
            return
    if n == armed.at:
        os.kill(os.getpid(), signal.SIGKILL)


def count_events(path: str) -> int:
    """How many events a counting-mode log holds (0 when the run made none)."""
    try:
        with open(path) as fh:
            return sum(1 for line in fh if line.strip())
    except FileNotFoundError:
        return 0


configure(os.environ.get(ENV))
