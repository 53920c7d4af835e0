"""The run lease: one writing run per workspace at a time.

Two runs appending to one workspace can orphan each other's part files, so every writer first
takes `_lease.json` at the workspace root. On a local path the file is created with O_EXCL (one
creator wins); on object stores the create is write-then-read-back, which narrows the race but
is not atomic. A lease is stale when its holder's pid is dead on this host, or when its
heartbeat (refreshed by a daemon thread) is older than `stale_after_s` (holders on other
hosts). A stale lease is taken over under a short take-over lock, so two runs that both find it
stale cannot both win. Leases are re-entrant within a process: nested writers share one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pipeline import failpoints
from pipeline.store import DISK_FULL, Workspace, disk_full_error
from schemas.errors import SynprefError

LEASE_FILE = "_lease.json"
TAKEOVER_FILE = "_lease.takeover"
STALE_AFTER_S = 600.0
HEARTBEAT_S = 30.0
TAKEOVER_STALE_S = 60.0


@dataclass(frozen=True)
class Holder:
    """Who holds a workspace: enough to find the process and judge whether it still runs."""

    host: str
    pid: int
    started: float
    command: str
    token: str
    heartbeat: float

    def describe(self) -> str:
        started = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on {self.host}, started {started}: {self.command}"


class WorkspaceBusy(SynprefError):
    """Another live run holds the workspace's lease."""

    def __init__(self, uri: str, holder: Holder) -> None:
        super().__init__(f"workspace {uri} is in use by another run ({holder.describe()}); wait for it "
                         f"to finish, or stop it (its lease is taken over once that process is gone)")
        self.holder = holder


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: Holder, *, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Dead pid on this host, or a heartbeat older than `stale_after_s` anywhere."""
    if holder.host == socket.gethostname() and not pid_alive(holder.pid):
        return True
    return (now if now is not None else time.time()) - holder.heartbeat > stale_after_s


class Lease:
    """A held lease; `release()` (or leaving the `with` block) gives it back."""

    def __init__(self, ws: Workspace, holder: Holder, took_over: Holder | None,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.ws, self.holder, self.took_over = ws, holder, took_over
        self._depth = 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True,
                                      name="synpref-lease-heartbeat")
        self._beat.start()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _heartbeat(self, every_s: float) -> None:
        while not self._stop.wait(every_s) and self.beat():
            pass

    def beat(self) -> bool:
        """Refresh the heartbeat; False once released or taken over (then it never writes again)."""
        with self._lock:
            current = read_holder(self.ws)
            if self._stop.is_set() or current is None or current.token != self.holder.token:
                return False
            self.holder = Holder(**{**asdict(self.holder), "heartbeat": time.time()})
            self.ws.write_bytes(LEASE_FILE, _encode(self.holder))
            return True

    def release(self) -> None:
        with _REGISTRY_LOCK:
            self._depth -= 1
            if self._depth > 0:
                return
            _REGISTRY.pop(_key(self.ws), None)
        with self._lock:
            self._stop.set()
            current = read_holder(self.ws)
            if current is not None and current.token == self.holder.token:
                self.ws.remove(LEASE_FILE)


_REGISTRY: dict[str, Lease] = {}
_REGISTRY_LOCK = threading.RLock()


def _key(ws: Workspace) -> str:
    return ws.path(LEASE_FILE)


def _encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder), indent=2).encode()


def _parse(ws: Workspace, name: str) -> Holder | None:
    try:
        data = json.loads(ws.read_bytes(name))
        return Holder(**{k: data[k] for k in Holder.__dataclass_fields__})
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def read_holder(ws: Workspace) -> Holder | None:
    """The lease's holder, or None when the workspace is free (or the file is unreadable)."""
    return _parse(ws, LEASE_FILE)


def _garbled_and_old(ws: Workspace, name: str, max_age_s: float) -> bool:
    """A lease file left empty or half-written by a process that died right after creating it."""
    if not ws.exists(name) or _parse(ws, name) is not None:
        return False
    modified = ws.fs.modified(ws.path(name)).timestamp() if ws.is_local else 0.0
    return time.time() - modified > max_age_s


def _exclusive_create(ws: Workspace, name: str, data: bytes) -> bool:
    """Create `name` only if absent; True when this call created it."""
    if ws.is_local:
        path = ws.path(name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            raise disk_full_error(path, len(data), exc) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            # An empty lease would read as a live run for TAKEOVER_STALE_S: leave none behind.
            with contextlib.suppress(OSError):
                os.unlink(path)
            if exc.errno not in DISK_FULL:
                raise
            raise disk_full_error(path, len(data), exc) from exc
        failpoints.write_event(name)
        return True
    if ws.exists(name):
        return False
    ws.write_bytes(name, data)
    return ws.read_bytes(name) == data


def _take_over(ws: Workspace, stale: Holder | None, holder: Holder) -> bool:
    """Replace the stale lease (`stale`; None: a garbled file) by `holder` unless another run did
    first; True on success. The take-over lock makes check-remove-create one step among runs."""
    if not _exclusive_create(ws, TAKEOVER_FILE, _encode(holder)):
        lock = _parse(ws, TAKEOVER_FILE)
        if (lock is not None and is_stale(lock, stale_after_s=TAKEOVER_STALE_S)) or _garbled_and_old(
                ws, TAKEOVER_FILE, TAKEOVER_STALE_S):
            ws.remove(TAKEOVER_FILE)  # a run that died mid take-over
        return False
    try:
        current = read_holder(ws)
        if (current.token if current else None) != (stale.token if stale else None):
            return False  # someone took it over meanwhile
        ws.remove(LEASE_FILE)
        return _exclusive_create(ws, LEASE_FILE, _encode(holder))
    finally:
        ws.remove(TAKEOVER_FILE)


def acquire(ws: Workspace, command: str, *, stale_after_s: float = STALE_AFTER_S,
            heartbeat_s: float = HEARTBEAT_S) -> Lease:
    """Take the workspace's lease for `command`, or raise WorkspaceBusy naming the live holder.

    Re-entrant: a process that already holds it gets the same lease back (released by its
    outermost holder).
    """
    with _REGISTRY_LOCK:
        held = _REGISTRY.get(_key(ws))
        if held is not None:
            held._depth += 1
            return held
        now = time.time()
        holder = Holder(socket.gethostname(), os.getpid(), now, command, uuid.uuid4().hex, now)
        took_over, current = None, None
        for _ in range(10):
            if _exclusive_create(ws, LEASE_FILE, _encode(holder)):
                break
            current = read_holder(ws)
            if current is None and not _garbled_and_old(ws, LEASE_FILE, TAKEOVER_STALE_S):
                continue  # released meanwhile, or being written right now
            if current is not None and not is_stale(current, stale_after_s=stale_after_s):
                raise WorkspaceBusy(ws.uri, current)
            if _take_over(ws, current, holder):
                took_over = current
                break
        else:
            raise WorkspaceBusy(ws.uri, current or read_holder(ws) or holder)
        lease = Lease(ws, holder, took_over, heartbeat_s)
        _REGISTRY[_key(ws)] = lease
        return lease
