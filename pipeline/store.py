"""The workspace: one folder (local path or fsspec URI) of Parquet tables and JSON files.

Every table is a folder of zstd Parquet shards plus `_manifest.json` (schema version, rows and
content hash per shard, a version). The manifest is the truth: a shard is visible only once the
manifest that lists it has been renamed into place, so a process killed mid-write leaves at most
an orphan file that nobody reads. Appends can be keyed (`unique_key`) so that writing the same
rows twice adds nothing. Many processes may append to one table at once: pipeline/store_commit.py
serializes their commits and re-checks keys against what is committed. Reads check every part
against its recorded sha256 and refuse a damaged table; `verify` (pipeline/store_verify.py)
checks a whole workspace.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import failpoints
from pipeline.covers import meeting, tagged
from pipeline.store_commit import (
    COMMIT_LOCK,
    MANIFEST,
    AppendPlan,
    KeyCache,
    Plan,
    bounds_of,
    commit,
    first_per_key,
    within_bounds,
    without_keys,
)
from pipeline.store_delta import LOG_DIR as DELTA_LOG
from pipeline.store_errors import DISK_FULL, WorkspaceError, disk_full_error, raise_if_disk_full
from pipeline.store_verify import Problem, verify_workspace

if TYPE_CHECKING:
    from pipeline.stage import Partition

__all__ = ["DISK_FULL", "MANIFEST", "Problem", "ShardInfo", "Workspace", "WorkspaceError", "disk_full_error",
           "raise_if_disk_full"]
_FREE_TEXT_COLUMNS = frozenset(
    {"conversation", "chosen", "rejected", "prompt", "raw", "raw_text", "detail", "guideline"}
)


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    sha256: str
    bytes: int = 0  # 0 in manifests written before sizes were recorded: no size check then
    bounds: dict[str, list[int]] | None = None  # store_commit.BOUNDED columns' [min, max]

    def entry(self) -> dict[str, Any]:
        """The part's manifest entry (fields left unset are not written)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Workspace:
    """A synpref workspace rooted at `uri` (a local path, `file://`, `memory://`, `s3://`, ...)."""

    def __init__(self, uri: str | Path, *, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = str(uri)
        self.storage_options = dict(storage_options or {})
        self.fs, root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        self.fs.makedirs(self.root, exist_ok=True)
        self._keys = KeyCache()

    def __repr__(self) -> str:
        return f"Workspace({self.uri!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # A workspace crosses to Dask and Ray workers as its URI; the worker opens its own
        # filesystem and key cache (locks and caches never travel).
        return (_open_workspace, (self.uri, self.storage_options))

    # -- paths and raw files -------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def local_path(self, *parts: str) -> Path:
        """A real filesystem path, for tools that need one (FAISS, torch checkpoints)."""
        if not self.is_local:
            raise WorkspaceError(f"{self.uri} is not a local workspace; {'/'.join(parts)} needs one")
        return Path(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Atomic write: a temp file next to the target, then a rename.

        A full disk raises WorkspaceError naming the file and leaves no temp file behind. A
        failpoint (pipeline/failpoints.py) may kill the process between the two steps."""
        target = self.path(relpath)
        tmp = self.write_temp(target, data)
        failpoints.write_event(relpath)
        self._rename(tmp, target)

    def write_temp(self, target: str, data: bytes) -> str:
        """`data` in a new temp file next to `target` (a full path); returns the temp file's path.

        Every durable write of the store starts here, so every one turns a full disk into the
        same WorkspaceError."""
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(tmp, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            # The target was never touched; drop the partial temp file, which a full disk needs back.
            with contextlib.suppress(OSError):
                self.fs.rm(tmp)
            raise disk_full_error(target, len(data), exc) from exc
        return tmp

    @contextlib.contextmanager
    def open_write(self, relpath: str) -> Iterator[Any]:
        """A binary file to stream into (a Parquet or Arrow IPC writer), published at `relpath` by
        one rename when the block ends: the same temp file, failpoint event and disk-full error as
        `write_bytes`; an exception in the block publishes nothing and leaves no temp file."""
        target = self.path(relpath)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            with self.fs.open(tmp, "wb") as fh:
                yield fh
        except BaseException as exc:
            with contextlib.suppress(OSError):
                self.fs.rm(tmp)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise disk_full_error(target, None, exc) from exc
            raise
        failpoints.write_event(relpath)
        self._rename(tmp, target)

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open(self.path(relpath), "rb") as fh:
            return fh.read()

    def write_json(self, relpath: str, obj: Any) -> None:
        self.write_bytes(
            relpath,
            json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str).encode(),
        )

    def read_json(self, relpath: str, default: Any = None) -> Any:
        if not self.exists(relpath):
            return default
        return json.loads(self.read_bytes(relpath))

    def listdir(self, relpath: str = "") -> list[str]:
        """The names in a folder, less the store's commit locks and Delta logs (plumbing, not content)."""
        if not self.exists(relpath):
            return []
        names = (p.rsplit("/", 1)[-1] for p in self.fs.ls(self.path(relpath), detail=False))
        return sorted(n for n in names if n not in (COMMIT_LOCK, DELTA_LOG))

    def remove(self, relpath: str) -> None:
        if self.exists(relpath):
            self.fs.rm(self.path(relpath), recursive=True)

    def _rename(self, src: str, dst: str) -> None:
        if self.is_local:
            Path(src).replace(dst)  # atomic on POSIX
        else:
            self.fs.mv(src, dst)

    # -- tables --------------------------------------------------------------------------

    def manifest(self, table: str) -> dict[str, Any]:
        data = self.read_json(f"{table}/{MANIFEST}")
        if data is None:
            return {"table": table, "schema_version": None, "shards": [], "rows": 0}
        return data

    def has_table(self, table: str) -> bool:
        return self.exists(f"{table}/{MANIFEST}")

    def tables(self) -> list[str]:
        names = []
        for name in self.listdir():
            if self.exists(f"{name}/{MANIFEST}"):
                names.append(name)
        return names

    def row_count(self, table: str) -> int:
        return int(self.manifest(table).get("rows", 0))

    def shard_files(self, table: str) -> list[str]:
        return [self.path(table, s["file"]) for s in self.manifest(table)["shards"]]

    def append(
        self,
        table: str,
        data: pa.Table | pl.DataFrame,
        *,
        unique_key: str | list[str] | None = None,
        schema: pa.Schema | None = None,
        partition: Partition | None = None,
    ) -> int:
        """Add rows as one new shard; returns how many rows were written.

        With `unique_key`, rows whose key is already in the table (or repeated within `data`)
        are skipped, so re-running a stage is a no-op, also when other processes append the
        same keys at the same time. With the pool `partition` the rows come from, the shard says
        so (pipeline/covers.py) and the keys are checked against only the shards that may hold
        that partition's pairs, never the whole table.
        """
        arrow = data.to_arrow() if isinstance(data, pl.DataFrame) else data
        if schema is not None:
            arrow = _conform(arrow, schema, table)
        key = [unique_key] if isinstance(unique_key, str) else unique_key
        seen = (self.read_json(f"{table}/{MANIFEST}") or {}).get("shards", [])
        if key and arrow.num_rows:
            # The filter against the table (or the partition's shards) runs before the lock;
            # under it, only shards committed since are checked again.
            shards = within_bounds(seen, arrow, key) if partition is None else meeting(self, seen, partition)
            existing = self._keys.keys(self, table, shards, key, evict=partition is None)
            arrow = without_keys(first_per_key(arrow, key), existing, key)
        index = len(seen)

        def write_part(rows: pa.Table) -> dict[str, Any]:
            return tagged(self._write_shard(table, rows, index).entry(), partition)

        within = partial(meeting, self, partition=partition) if partition is not None else \
            partial(within_bounds, arrow=arrow, key=key) if key else None
        plan = AppendPlan(self, table, arrow, write_part(arrow) if arrow.num_rows else None, seen, key,
                          write_part, self._keys, within=within)
        commit(self, table, plan)
        return plan.written

    def replace(
        self,
        table: str,
        data: pa.Table | pl.DataFrame,
        *,
        schema: pa.Schema | None = None,
        shard_rows: int | None = None,
    ) -> int:
        """Swap a table's whole content (for views such as gold/silver) in one manifest write.

        With `shard_rows`, the content is split into shards of at most that many rows (exports
        that trainers read shard by shard); readers still see the old content or the new one.
        """
        arrow = data.to_arrow() if isinstance(data, pl.DataFrame) else data
        if schema is not None:
            arrow = _conform(arrow, schema, table)
        step = max(1, arrow.num_rows if shard_rows is None else shard_rows)
        first = len((self.read_json(f"{table}/{MANIFEST}") or {}).get("shards", []))
        shards = [
            self._write_shard(table, arrow.slice(start, step), first + i).entry()
            for i, start in enumerate(range(0, arrow.num_rows, step))
        ]
        commit(self, table, lambda current: Plan(
            shards, arrow.schema, [s["file"] for s in (current or {}).get("shards", [])]))
        return arrow.num_rows

    def read(
        self, table: str, columns: list[str] | None = None, *, schema: pa.Schema | None = None,
        shards: list[dict[str, Any]] | None = None,
    ) -> pa.Table:
        """The whole table (or these manifest `shards` of it) as Arrow; an absent table reads as
        empty when `schema` is given.

        Every part is checked against its manifest entry; a damaged table raises WorkspaceError.
        """
        if shards is None:
            shards = self.manifest(table)["shards"] if self.has_table(table) else []
        if not shards:
            if schema is None:
                stored = self.manifest(table).get("schema")
                schema = decode_schema(stored) if stored else pa.schema([])
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        parts = []
        for shard in shards:
            part = pq.read_table(pa.BufferReader(self.part_bytes(table, shard)), columns=columns)
            self._check_rows(table, shard, part.num_rows)
            parts.append(part)
        return pa.concat_tables(parts, promote_options="permissive")

    def scan(self, table: str, *, schema: pa.Schema | None = None,
             shards: list[dict[str, Any]] | None = None) -> pl.LazyFrame:
        """A lazy polars frame over the table's shards, or these manifest `shards` of it (local
        workspaces scan files directly).

        Polars reads local files itself, so here each part is only checked to exist with its
        recorded size (one stat per part); `read`, `iter_batches` and `synpref doctor` hash them.
        """
        if shards is None:
            shards = self.manifest(table)["shards"] if self.has_table(table) else []
        if shards and self.is_local:
            for shard in shards:
                self._check_size(table, shard)
            return pl.scan_parquet([self.path(table, s["file"]) for s in shards])
        return pl.from_arrow(self.read(table, schema=schema, shards=shards)).lazy()  # type: ignore[union-attr]

    def iter_batches(
        self, table: str, batch_rows: int = 50_000, columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        """Stream a table shard by shard, in batches, to keep memory bounded (one part at a time)."""
        for shard in self.manifest(table)["shards"] if self.has_table(table) else []:
            pf = pq.ParquetFile(pa.BufferReader(self.part_bytes(table, shard)))
            self._check_rows(table, shard, pf.metadata.num_rows)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                yield pa.Table.from_batches([batch])

    def keys(self, table: str, column: str = "pair_id") -> pa.Array:
        if not self.has_table(table):
            return pa.array([], pa.string())
        return self.read(table, columns=[column]).column(column).combine_chunks()

    def verify(self, table: str | None = None) -> list[Problem]:
        """Every problem of `table` (default: all tables): missing, short or altered parts, wrong
        row counts, unreadable manifests, and orphan part files (harmless, listed for the count)."""
        return verify_workspace(self, table)

    def part_bytes(self, table: str, shard: dict[str, Any]) -> bytes:
        """A part's bytes, checked against the manifest's sha256: one hash pass over bytes that are
        read anyway, then parsed from the buffer, so nothing reads a part it has not checked."""
        try:
            data = self.read_bytes(f"{table}/{shard['file']}")
        except FileNotFoundError:
            raise self._damaged(table, shard, "is missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != shard["sha256"]:
            raise self._damaged(table, shard, f"does not match its recorded sha256 ({len(data)} bytes read, "
                                f"sha256 {digest[:12]}..., manifest {shard['sha256'][:12]}...)")
        return data

    # -- internals -----------------------------------------------------------------------

    def _check_rows(self, table: str, shard: dict[str, Any], rows: int) -> None:
        if rows != int(shard["rows"]):
            raise self._damaged(table, shard, f"holds {rows} rows, the manifest records {shard['rows']}")

    def _check_size(self, table: str, shard: dict[str, Any]) -> None:
        try:
            size = os.stat(self.path(table, shard["file"])).st_size
        except FileNotFoundError:
            raise self._damaged(table, shard, "is missing") from None
        if shard.get("bytes") and size != shard["bytes"]:
            raise self._damaged(table, shard, f"is {size} bytes, the manifest records {shard['bytes']}")

    def _damaged(self, table: str, shard: dict[str, Any], what: str) -> WorkspaceError:
        return WorkspaceError(f"table {table} is damaged: part {shard['file']} {what}; "
                              f"`synpref doctor -w {self.uri}` lists every problem")

    def _write_shard(self, table: str, arrow: pa.Table, index: int,
                     group_rows: int | None = None) -> ShardInfo:
        buf = io.BytesIO()
        # Dictionary pages only pay off for repetitive columns; long free text is mostly unique.
        dictionary = [c for c in arrow.column_names if c not in _FREE_TEXT_COLUMNS]
        pq.write_table(arrow, buf, compression="zstd", use_dictionary=dictionary, row_group_size=group_rows)
        data = buf.getvalue()
        name = f"part-{index:06d}-{uuid.uuid4().hex[:8]}.parquet"
        self.write_bytes(f"{table}/{name}", data)
        return ShardInfo(file=name, rows=arrow.num_rows, sha256=hashlib.sha256(data).hexdigest(),
                         bytes=len(data), bounds=bounds_of(arrow))


def _conform(arrow: pa.Table, schema: pa.Schema, table: str) -> pa.Table:
    missing = [f.name for f in schema if f.name not in arrow.column_names]
    if missing:
        raise WorkspaceError(f"table {table}: rows lack columns {missing}")
    try:
        return arrow.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise WorkspaceError(f"table {table}: rows do not match the schema: {exc}") from exc


def decode_schema(text: str) -> pa.Schema:
    """The Arrow schema a manifest records (hex of its IPC serialization)."""
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(text)))


def _open_workspace(uri: str, storage_options: dict[str, Any]) -> Workspace:
    return Workspace(uri, storage_options=storage_options or None)
