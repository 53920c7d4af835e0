"""Table commits that many writer processes can make at once without losing or duplicating rows.

A commit writes its part files first, with no lock held (that is the slow part), then, holding
the table's commit lock, re-reads the manifest, drops rows whose unique key another writer has
committed since the part was planned, and renames a manifest with `version + 1` into place.
Readers never take the lock: a manifest is replaced by one rename, so they see the old table or
the new one.

Locking, by filesystem:
- Local workspaces (a path or `file://`): `fcntl.flock` on `{table}/_commit.lock`. It excludes
  other processes and other threads alike (every `open` is its own lock holder), and the kernel
  releases it when the holder dies, SIGKILL included, so a killed writer never wedges a table.
  flock is advisory and, on NFS, only as good as the server's lock support.
- Any other fsspec filesystem (s3://, gs://, memory://): no lock spans processes there. Commits
  in one process are serialized by a thread lock, and a commit re-reads the manifest's version
  right before renaming its new manifest into place, starting over when another writer got in
  first. That check and the rename are two operations (on object stores the rename is a copy
  plus a delete), so two processes that pass the check at the same instant still race and the
  later rename wins: run one writer process per table on such stores.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import failpoints, store_delta

if TYPE_CHECKING:
    from pipeline.store import Workspace

MANIFEST = "_manifest.json"
COMMIT_LOCK = "_commit.lock"
OPTIMISTIC_ATTEMPTS = 20
PAUSE_ENV = "SYNPREF_STORE_PAUSE_BEFORE_COMMIT"
"""Test hook, `TABLE:FIFO`: a commit to TABLE that finds the lock taken writes `waiting PID` into
the FIFO before it blocks; holding the lock, its parts written, it writes `paused PID` and waits
until a line arrives on `FIFO.go` (or the process is killed)."""

_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


class CommitConflict(RuntimeError):
    """Other writers kept changing a table's manifest while this commit tried to land."""


@dataclass
class Plan:
    """What a commit puts in place: the new manifest's shards, and part files it makes obsolete."""

    shards: list[dict[str, Any]] | None  # None: leave the manifest as it is
    schema: pa.Schema | None = None
    obsolete: list[str] = field(default_factory=list)


def thread_lock(key: str) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(key, threading.RLock())


@contextmanager
def commit_lock(ws: Workspace, table: str) -> Iterator[None]:
    """Hold `table`'s commit lock: flock across processes on local disks, a thread lock elsewhere."""
    with thread_lock(ws.path(table)):
        if not ws.is_local:
            yield
            return
        path = Path(ws.path(table, COMMIT_LOCK))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _tell_hook(table, "waiting")
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def version_of(manifest: dict[str, Any] | None) -> tuple[int, str | None]:
    """(version, commit id): the id tells apart two manifests that restored the same version."""
    if manifest is None:
        return (-1, None)
    return (int(manifest.get("version", 0)), manifest.get("commit"))


def commit(ws: Workspace, table: str, plan: Callable[[dict[str, Any] | None], Plan]) -> Plan:
    """Run `plan` against the latest manifest and put its result in place as version + 1.

    `plan` gets the committed manifest (None when the table has none yet) and may be called
    again, with a newer manifest, when an optimistic commit loses a race.
    """
    target = ws.path(table, MANIFEST)
    with commit_lock(ws, table):
        for _ in range(OPTIMISTIC_ATTEMPTS):
            current = committed = ws.read_json(f"{table}/{MANIFEST}")
            result = plan(current)
            if result.shards is None:
                break
            _pause_if_asked(table)
            payload = _manifest_bytes(table, current, result)
            committed = json.loads(payload)
            if ws.is_local:
                ws.write_bytes(f"{table}/{MANIFEST}", payload)  # under flock: nobody else commits
                break
            tmp = ws.write_temp(target, payload)
            failpoints.write_event(f"{table}/{MANIFEST}")
            if version_of(ws.read_json(f"{table}/{MANIFEST}")) == version_of(current):
                ws.fs.mv(tmp, target)
                break
            ws.fs.rm(tmp)
        else:
            raise CommitConflict(
                f"table {table}: the manifest changed under {OPTIMISTIC_ATTEMPTS} commit attempts "
                f"in a row; too many writers for an optimistic commit on {ws.uri}")
        store_delta.mirror(ws, table, committed)  # the Delta log follows the manifest, same lock
    for file in result.obsolete:
        path = ws.path(table, file)
        if ws.fs.exists(path):
            ws.fs.rm(path)
    return result


def read_keys(ws: Workspace, table: str, shards: list[dict[str, Any]], cols: list[str]) -> pl.DataFrame:
    """The distinct key values of `shards`, reading only the key columns.

    Unverified on purpose: the keyed check runs on every append and reads a few columns; full
    reads (`Workspace.read`) check every part's sha256.
    """
    parts = [pq.read_table(ws.path(table, s["file"]), columns=cols, filesystem=ws.fs) for s in shards]
    if not parts:
        return pl.DataFrame()
    frame = pl.from_arrow(pa.concat_tables(parts, promote_options="permissive"))
    assert isinstance(frame, pl.DataFrame)
    return frame.unique()


class KeyCache:
    """The key columns of parts already read, per table and key: a part never changes once
    written, so a process's next keyed append reads only the parts committed since (O(new parts)
    instead of O(table) reads per append). It holds one copy of those key columns for the
    Workspace's lifetime, as much as one keyed append used to read; entries of parts that a
    replace dropped are evicted."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, tuple[str, ...]], dict[str, pl.DataFrame]] = {}
        self._lock = threading.Lock()

    def keys(self, ws: Workspace, table: str, shards: list[dict[str, Any]], cols: list[str],
             *, evict: bool = True) -> pl.DataFrame:
        """The key values of exactly `shards`; with `evict`, `shards` is the whole table and
        cached parts not in it are dropped."""
        with self._lock:
            cached = self._parts.setdefault((table, tuple(cols)), {})
            for s in shards:
                if s["file"] not in cached:
                    cached[s["file"]] = read_keys(ws, table, [s], cols)
            if evict:
                for file in set(cached) - {s["file"] for s in shards}:
                    del cached[file]
            frames = [cached[s["file"]] for s in shards if cached[s["file"]].height]
        return pl.concat(frames, rechunk=False) if frames else pl.DataFrame()


BOUNDED = ("round",)
"""Integer columns whose min and max a part's manifest entry records (`bounds`): a keyed append
whose rows all hold one value of such a key column checks only the parts whose range holds it
(a round's judgments or scores are never checked against other rounds' keys, so the key cache
holds one round's, not the table's)."""


def bounds_of(arrow: pa.Table) -> dict[str, list[int]] | None:
    """The `bounds` of a part's rows: [min, max] of each BOUNDED integer column without nulls."""
    out = {}
    for col in BOUNDED:
        if col not in arrow.column_names or not pa.types.is_integer(arrow.schema.field(col).type):
            continue
        column = arrow.column(col)
        if arrow.num_rows and not column.null_count:
            low, high = pc.min_max(column).values()
            out[col] = [int(low.as_py()), int(high.as_py())]
    return out or None


def within_bounds(shards: list[dict[str, Any]], arrow: pa.Table, key: list[str]) -> list[dict[str, Any]]:
    """The `shards` that may hold a key of `arrow`'s rows, by the BOUNDED key columns that hold one
    value in every row (all of them when none does; a part without `bounds` always)."""
    fixed = {}
    for col in (c for c in key if c in BOUNDED and c in arrow.column_names):
        values = pc.unique(arrow.column(col))
        if len(values) == 1 and values[0].is_valid:
            fixed[col] = int(values[0].as_py())
    if not fixed:
        return shards
    return [s for s in shards if not s.get("bounds") or all(
        col not in s["bounds"] or s["bounds"][col][0] <= value <= s["bounds"][col][1]
        for col, value in fixed.items())]


def without_keys(arrow: pa.Table, existing: pl.DataFrame, cols: list[str]) -> pa.Table:
    """`arrow` less the rows whose key is in `existing` (row order kept)."""
    if arrow.num_rows == 0 or existing.height == 0:
        return arrow
    frame = pl.from_arrow(arrow.select(cols)).with_row_index("__row")  # type: ignore[union-attr]
    frame = frame.join(existing, on=cols, how="anti", maintain_order="left")
    if frame.height == arrow.num_rows:
        return arrow
    return arrow.take(pa.array(frame["__row"].to_numpy()))


def first_per_key(arrow: pa.Table, cols: list[str]) -> pa.Table:
    """`arrow` with only the first row of every key."""
    frame = pl.from_arrow(arrow.select(cols)).with_row_index("__row")  # type: ignore[union-attr]
    frame = frame.unique(subset=cols, keep="first", maintain_order=True)
    if frame.height == arrow.num_rows:
        return arrow
    return arrow.take(pa.array(frame["__row"].to_numpy()))


def shards_since(base: list[dict[str, Any]], current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Shards committed after `base` was read; all of `current` when a replace dropped any of `base`."""
    now = {s["file"] for s in current}
    if any(s["file"] not in now for s in base):
        return current
    before = {s["file"] for s in base}
    return [s for s in current if s["file"] not in before]


def _manifest_bytes(table: str, current: dict[str, Any] | None, plan: Plan) -> bytes:
    assert plan.shards is not None
    schema = plan.schema if plan.schema is not None else pa.schema([])
    meta = schema.metadata or {}
    body = {
        "table": table,
        "version": version_of(current)[0] + 1 if current is not None else 1,
        "commit": uuid.uuid4().hex,
        "schema_version": (meta.get(b"synpref.version") or b"").decode() or None,
        "schema": schema.serialize().to_pybytes().hex(),
        "shards": plan.shards,
        "rows": sum(int(s["rows"]) for s in plan.shards),
    }
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False, default=str).encode()


def _tell_hook(table: str, state: str) -> str | None:
    """Write `state PID` into the test hook's FIFO when PAUSE_ENV names `table`; the FIFO's path."""
    name, _, fifo = os.environ.get(PAUSE_ENV, "").partition(":")
    if not fifo or name != table:
        return None
    with open(fifo, "w") as fh:
        fh.write(f"{state} {os.getpid()}\n")
    return fifo


def _pause_if_asked(table: str) -> None:
    fifo = _tell_hook(table, "paused")
    if fifo is not None:
        with open(f"{fifo}.go") as fh:
            fh.readline()


@dataclass
class AppendPlan:
    """One append's rows and part, re-checked under the lock against shards committed since.

    The part was written from the manifest in `seen`; when other writers committed rows with
    the same keys meanwhile, the part is rewritten without them (under the lock, so rarely and
    only for the rows of this append).
    """

    ws: Workspace
    table: str
    rows: pa.Table
    part: dict[str, Any] | None
    seen: list[dict[str, Any]]
    key: list[str] | None
    write_part: Callable[[pa.Table], dict[str, Any]]
    cache: KeyCache
    within: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    """Which of the shards committed since can hold these rows' keys (all, when None)."""
    obsolete: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.rows.num_rows if self.part is not None else 0

    def __call__(self, current: dict[str, Any] | None) -> Plan:
        shards = list(current["shards"]) if current else []
        fresh = shards_since(self.seen, shards)
        if self.within is not None:
            fresh = self.within(fresh)
        if self.key and self.part is not None and fresh:
            existing = self.cache.keys(self.ws, self.table, fresh, self.key, evict=False)
            kept = without_keys(self.rows, existing, self.key)
            if kept.num_rows < self.rows.num_rows:
                self.obsolete.append(self.part["file"])
                self.rows = kept
                self.part = self.write_part(kept) if kept.num_rows else None
        self.seen = shards
        if self.part is None:
            # Nothing to add; a table that does not exist yet still gets its (empty) manifest.
            return Plan(None if current is not None else [], self.rows.schema, self.obsolete)
        return Plan([*shards, self.part], self.rows.schema, self.obsolete)
