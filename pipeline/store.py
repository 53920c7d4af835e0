"""The workspace: one folder (local path or fsspec URI) of Parquet tables and JSON files.

Every table is a folder of zstd Parquet shards plus `_manifest.json` (schema version, rows and
content hash per shard). The manifest is the truth: a shard is visible only once the manifest
that lists it has been renamed into place, so a process killed mid-write leaves at most an
orphan file that nobody reads. Appends can be keyed (`unique_key`) so that writing the same
rows twice adds nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
_FREE_TEXT_COLUMNS = frozenset(
    {"conversation", "chosen", "rejected", "prompt", "raw", "raw_text", "detail", "guideline"}
)
_locks: dict[str, threading.RLock] = {}
_locks_guard = threading.Lock()


class WorkspaceError(RuntimeError):
    """A workspace operation failed; the message names the table or file."""


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    sha256: str


def _lock_for(key: str) -> threading.RLock:
    with _locks_guard:
        return _locks.setdefault(key, threading.RLock())


class Workspace:
    """A synpref workspace rooted at `uri` (a local path, `file://`, `memory://`, `s3://`, ...)."""

    def __init__(self, uri: str | Path, *, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = str(uri)
        self.fs, root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = root.rstrip("/")
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )
        self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Workspace({self.uri!r})"

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
        """Atomic write: a temp file next to the target, then a rename."""
        target = self.path(relpath)
        parent = target.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
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
        if not self.exists(relpath):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.path(relpath), detail=False))

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
    ) -> int:
        """Add rows as one new shard; returns how many rows were written.

        With `unique_key`, rows whose key is already in the table (or repeated within `data`)
        are skipped, so re-running a stage is a no-op.
        """
        arrow = data.to_arrow() if isinstance(data, pl.DataFrame) else data
        if schema is not None:
            arrow = _conform(arrow, schema, table)
        with _lock_for(self.path(table)):
            if unique_key is not None and arrow.num_rows:
                arrow = self._only_new(table, arrow, unique_key)
            if arrow.num_rows == 0:
                if not self.has_table(table):
                    self._write_manifest(table, [], arrow.schema)
                return 0
            manifest = self.manifest(table)
            shard = self._write_shard(table, arrow, len(manifest["shards"]))
            self._write_manifest(table, [*manifest["shards"], shard.__dict__], arrow.schema)
            return arrow.num_rows

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
        step = arrow.num_rows if shard_rows is None else max(1, shard_rows)
        with _lock_for(self.path(table)):
            old = self.manifest(table)["shards"]
            shards = [
                self._write_shard(table, arrow.slice(start, step), len(old) + i).__dict__
                for i, start in enumerate(range(0, arrow.num_rows, max(1, step)))
            ]
            self._write_manifest(table, shards, arrow.schema)
            for s in old:
                path = self.path(table, s["file"])
                if self.fs.exists(path):
                    self.fs.rm(path)
            return arrow.num_rows

    def read(
        self, table: str, columns: list[str] | None = None, *, schema: pa.Schema | None = None
    ) -> pa.Table:
        """The whole table as Arrow; an absent table reads as empty when `schema` is given."""
        files = self.shard_files(table) if self.has_table(table) else []
        if not files:
            if schema is None:
                stored = self.manifest(table).get("schema")
                schema = _schema_from_json(stored) if stored else pa.schema([])
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        parts = [pq.read_table(f, columns=columns, filesystem=self.fs) for f in files]
        return pa.concat_tables(parts, promote_options="permissive")

    def scan(self, table: str, *, schema: pa.Schema | None = None) -> pl.LazyFrame:
        """A lazy polars frame over the table's shards (local workspaces scan files directly)."""
        files = self.shard_files(table) if self.has_table(table) else []
        if files and self.is_local:
            return pl.scan_parquet(files)
        return pl.from_arrow(self.read(table, schema=schema)).lazy()  # type: ignore[union-attr]

    def iter_batches(
        self, table: str, batch_rows: int = 50_000, columns: list[str] | None = None
    ) -> Iterator[pa.Table]:
        """Stream a table shard by shard, in batches, to keep memory bounded."""
        for f in self.shard_files(table) if self.has_table(table) else []:
            with self.fs.open(f, "rb") as fh:
                pf = pq.ParquetFile(fh)
                for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                    yield pa.Table.from_batches([batch])

    def keys(self, table: str, column: str = "pair_id") -> pa.Array:
        if not self.has_table(table):
            return pa.array([], pa.string())
        return self.read(table, columns=[column]).column(column).combine_chunks()

    # -- internals -----------------------------------------------------------------------

    def _only_new(self, table: str, arrow: pa.Table, unique_key: str | list[str]) -> pa.Table:
        cols = [unique_key] if isinstance(unique_key, str) else list(unique_key)
        frame = pl.from_arrow(arrow).with_row_index("__row")  # type: ignore[union-attr]
        frame = frame.unique(subset=cols, keep="first", maintain_order=True)
        if self.has_table(table) and self.row_count(table):
            existing = pl.from_arrow(self.read(table, columns=cols))  # type: ignore[union-attr]
            frame = frame.join(existing.unique(), on=cols, how="anti", maintain_order="left")
        return arrow.take(pa.array(frame["__row"].to_numpy()))

    def _write_shard(self, table: str, arrow: pa.Table, index: int) -> ShardInfo:
        buf = io.BytesIO()
        # Dictionary pages only pay off for repetitive columns; long free text is mostly unique.
        dictionary = [c for c in arrow.column_names if c not in _FREE_TEXT_COLUMNS]
        pq.write_table(arrow, buf, compression="zstd", use_dictionary=dictionary)
        data = buf.getvalue()
        name = f"part-{index:06d}-{uuid.uuid4().hex[:8]}.parquet"
        self.write_bytes(f"{table}/{name}", data)
        return ShardInfo(file=name, rows=arrow.num_rows, sha256=hashlib.sha256(data).hexdigest())

    def _write_manifest(self, table: str, shards: list[dict[str, Any]], schema: pa.Schema) -> None:
        meta = schema.metadata or {}
        self.write_json(
            f"{table}/{MANIFEST}",
            {
                "table": table,
                "schema_version": (meta.get(b"synpref.version") or b"").decode() or None,
                "schema": _schema_to_json(schema),
                "shards": shards,
                "rows": sum(int(s["rows"]) for s in shards),
            },
        )


def _conform(arrow: pa.Table, schema: pa.Schema, table: str) -> pa.Table:
    missing = [f.name for f in schema if f.name not in arrow.column_names]
    if missing:
        raise WorkspaceError(f"table {table}: rows lack columns {missing}")
    try:
        return arrow.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise WorkspaceError(f"table {table}: rows do not match the schema: {exc}") from exc


def _schema_to_json(schema: pa.Schema) -> str:
    return schema.serialize().to_pybytes().hex()


def _schema_from_json(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(text)))
