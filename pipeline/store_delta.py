"""A Delta Lake transaction log beside every table's manifest, so that other engines read synpref tables.

Why: a workspace table is a folder of Parquet parts plus `_manifest.json`, which only synpref
reads. Each commit also records the committed part files in `{table}/_delta_log/` (the Delta Lake
protocol, written by the `deltalake` library), so polars (`pl.read_delta`), DuckDB
(`delta_scan`), Spark and Ray Data read the table directly, one Delta version per synpref commit
(time travel to an earlier round). The parts are registered where they are; nothing is rewritten.

The manifest stays the truth; the Delta log is a mirror of it. `commit()` calls `mirror` holding
the table's commit lock, after the manifest is in place. `sync` compares the Delta table's files
with the manifest's and commits the difference: an append adds its new parts, a replace adds the
new parts and removes the old ones, and a change of schema rewrites the log's file list in one
overwrite. A process killed between the manifest and the Delta commit leaves the log one commit
behind: the next commit (or `ensure`) catches up. The mirror never fails a synpref commit: an
error is logged, and a table whose schema Delta cannot express (null, unsigned or half-float
columns, fixed-size lists, non-microsecond timestamps) gets no Delta log, with one log line.
`SYNPREF_DELTA_LOG=0` turns the mirror off.

The store deletes a replaced table's old parts after the commit, so, as after a Delta VACUUM,
older Delta versions may list files that are gone; the latest version is always whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Schema
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

if TYPE_CHECKING:
    from pipeline.store import Workspace

ENV = "SYNPREF_DELTA_LOG"
LOG_DIR = "_delta_log"
MANIFEST = "_manifest.json"
log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = "10"
"""Commits between Delta checkpoints: every commit (and every reader) replays the log from the last
checkpoint, so a short interval keeps a commit cheap (Delta's default is 100)."""
KEEP_TABLES = 64
_tables: dict[str, DeltaTable] = {}  # the Delta tables this process committed to, by URI
_tables_lock = threading.Lock()
_told: set[tuple[str, str]] = set()
_told_lock = threading.Lock()
# s3fs storage options and their delta-rs (object_store) names.
_S3_OPTIONS = {"key": "aws_access_key_id", "secret": "aws_secret_access_key", "token": "aws_session_token",
               "endpoint_url": "aws_endpoint_url", "region_name": "aws_region"}


def enabled() -> bool:
    """False when `SYNPREF_DELTA_LOG` is 0, false, no or off (read at every commit)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def mirror(ws: Workspace, table: str, manifest: dict[str, Any] | None = None) -> str:
    """`sync`, called by every commit with the manifest it committed: what it did, or
    "off"/"failed"; it never raises."""
    if not enabled():
        return "off"
    try:
        return sync(ws, table, manifest)
    except Exception as exc:  # the manifest is committed: the mirror must not fail the commit
        log.warning("table %s: the Delta log was not updated (%s: %s); the next commit or "
                    "store_delta.ensure catches up", table, type(exc).__name__, exc)
        return "failed"


def ensure(ws: Workspace, table: str) -> str:
    """`sync` under the table's commit lock: for a reader that wants the Delta log current."""
    from pipeline.store_commit import commit_lock

    with commit_lock(ws, table):
        return sync(ws, table)


def location(ws: Workspace, table: str) -> tuple[str, dict[str, str]] | None:
    """The Delta table URI of `table` and its delta-rs storage options; None where deltalake cannot
    reach the workspace (fsspec's memory:// lives in this process only)."""
    if ws.is_local:
        return ws.path(table), {}
    protocols = ws.fs.protocol if isinstance(ws.fs.protocol, tuple) else (ws.fs.protocol,)
    scheme = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "abfs": "abfs", "abfss": "abfss",
              "az": "az"}.get(protocols[0])
    if scheme is None:
        return None
    return f"{scheme}://{ws.path(table)}", storage_options(scheme, ws.storage_options)


def storage_options(scheme: str, options: dict[str, Any]) -> dict[str, str]:
    """fsspec's storage options as delta-rs takes them: s3fs names are translated, other string
    values are passed as they are (delta-rs also reads AWS_*, GOOGLE_*, AZURE_* variables)."""
    out: dict[str, str] = {}
    flat = {**options, **(options.get("client_kwargs") or {})}
    for key, value in flat.items():
        if not isinstance(value, str):
            continue
        out[_S3_OPTIONS.get(key, key) if scheme == "s3" else key] = value
    return out


def unsupported(schema: pa.Schema) -> str | None:
    """Why Delta Lake cannot hold `schema` (None when it can)."""
    if len(schema) == 0:
        return "it has no columns"
    for field in schema:
        if (why := _type_problem(field.type)) is not None:
            return f"column {field.name}: {why}"
    return None


def sync(ws: Workspace, table: str, manifest: dict[str, Any] | None = None) -> str:
    """Make the Delta log list exactly the parts of `table`'s committed manifest (read here unless
    the committing caller passes it): "created", "appended", "replaced", "overwritten" (the
    schema changed), "in sync", "skipped" (Delta cannot hold the schema, or reach the workspace)
    or "no table". Delta errors raise."""
    from pipeline.store import decode_schema

    where = location(ws, table)
    if where is None:
        _tell_once(ws, table, f"deltalake cannot reach {ws.uri}")
        return "skipped"
    uri, options = where
    if manifest is None:
        manifest = ws.read_json(f"{table}/{MANIFEST}")
    if manifest is None:
        return "no table"
    text = manifest.get("schema")
    schema = decode_schema(text) if text else pa.schema([])
    if (why := unsupported(schema)) is not None:
        dropped = _drop_log(ws, table)
        _tell_once(ws, table, f"Delta Lake cannot hold its schema ({why})",
                   "; its old Delta log was removed" if dropped else "")
        return "skipped"
    wanted = Schema.from_arrow(schema)
    shards = {s["file"]: s for s in manifest["shards"]}
    props = CommitProperties(custom_metadata={
        "synpref.table": table, "synpref.version": int(manifest.get("version", 0)),
        "synpref.commit": manifest.get("commit") or ""})
    delta = _load(ws, table, uri, options)
    if delta is None:
        create_table_with_add_actions(uri, wanted, [_add(ws, table, s) for s in shards.values()],
                                      mode="error", storage_options=options or None,
                                      configuration={"delta.checkpointInterval": CHECKPOINT_INTERVAL},
                                      commit_properties=props)
        return "created"
    actions = pa.table(delta.get_add_actions(flatten=False)).select(["path", "size_bytes"]).to_pylist()
    have = {a["path"]: int(a["size_bytes"]) for a in actions}
    current = delta.schema()
    merged = _merged(current, wanted) if set(have) & set(shards) else wanted
    if set(have) == set(shards) and merged.to_json() == current.to_json():
        return "in sync"
    if merged.to_json() != current.to_json():
        # Only an overwrite changes a Delta table's schema: it lists every part again.
        delta.create_write_transaction([_add(ws, table, s) for s in shards.values()], "overwrite",
                                       merged, commit_properties=props)
        return "overwritten"
    now = int(time.time() * 1000)
    gone = [RemoveAction(path, True, now, size) for path, size in have.items() if path not in shards]
    new: list[AddAction | RemoveAction] = [_add(ws, table, s) for f, s in shards.items() if f not in have]
    delta.create_write_transaction([*new, *gone], "append", merged, commit_properties=props)
    return "replaced" if gone else "appended"


def delta_files(ws: Workspace, table: str) -> set[str] | None:
    """The part files the latest Delta version lists; None when the table has no Delta log."""
    where = location(ws, table)
    if where is None or not ws.exists(f"{table}/{LOG_DIR}"):
        return None
    delta = DeltaTable(where[0], storage_options=where[1] or None)
    return set(pa.table(delta.get_add_actions(flatten=False)).column("path").to_pylist())


def _load(ws: Workspace, table: str, uri: str, options: dict[str, str]) -> DeltaTable | None:
    """The Delta table at its latest version, or None when there is none. The process keeps the
    tables it committed to and reads only the log entries added since (a fresh load replays the
    log from its last checkpoint). A log that no longer loads (a version file lost) is dropped,
    to be rebuilt from the manifest."""
    if not ws.exists(f"{table}/{LOG_DIR}"):
        return None
    with _tables_lock:
        cached = _tables.pop(uri, None)
    if cached is not None:
        with contextlib.suppress(Exception):
            cached.update_incremental()
            if ws.exists(f"{table}/{LOG_DIR}/{cached.version():020d}.json"):  # not rolled back
                return _keep(uri, cached)
    try:
        return _keep(uri, DeltaTable(uri, storage_options=options or None))
    except TableNotFoundError:
        pass
    except Exception as exc:
        log.warning("table %s: its Delta log does not load (%s); rebuilding it from the manifest "
                    "(its Delta history is lost)", table, exc)
    _drop_log(ws, table)
    return None


def _keep(uri: str, delta: DeltaTable) -> DeltaTable:
    with _tables_lock:
        _tables[uri] = delta
        while len(_tables) > KEEP_TABLES:
            _tables.pop(next(iter(_tables)))
    return delta


def _drop_log(ws: Workspace, table: str) -> bool:
    with _tables_lock:
        _tables.pop(ws.path(table), None)
    if not ws.exists(f"{table}/{LOG_DIR}"):
        return False
    if ws.is_local:
        shutil.rmtree(ws.path(table, LOG_DIR), ignore_errors=True)
    else:
        ws.remove(f"{table}/{LOG_DIR}")
    return True


def _add(ws: Workspace, table: str, shard: dict[str, Any]) -> AddAction:
    size = int(shard.get("bytes") or 0) or int(ws.fs.size(ws.path(table, shard["file"])))
    return AddAction(shard["file"], size, {}, int(time.time() * 1000), True,
                     json.dumps({"numRecords": int(shard["rows"]), **file_stats(ws, table, shard["file"])}))


def file_stats(ws: Workspace, table: str, file: str) -> dict[str, dict[str, Any]]:
    """Delta's per-file column statistics (minValues, maxValues, nullCount) from the part's Parquet
    footer, for its top-level string, integer and floating columns: what lets Delta readers skip
    the parts a filter on pair_id (or ingest_seq, round, ...) cannot match. A string longer than
    `STATS_CHARS` gets no bounds (a cut maximum would be too small); float bounds leave NaN out,
    as the Parquet writer's do; a column whose footer has no statistics is left out. Empty when
    the footer cannot be read."""
    import pyarrow.parquet as pq

    try:
        with ws.fs.open(ws.path(table, file), "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
    except Exception:  # stats are an optimization: the file is listed without them
        return {}
    arrow = meta.schema.to_arrow_schema()
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for j in range(meta.num_columns):
        name = meta.schema.column(j).path
        if name not in arrow.names or not _has_stats(arrow.field(name).type):
            continue
        bounds = _column_bounds(meta, j)
        if bounds is None:
            continue
        nulls[name], low_value, high_value = bounds
        if low_value is not None:
            low[name], high[name] = low_value, high_value
    return {"minValues": low, "maxValues": high, "nullCount": nulls} if nulls else {}


STATS_CHARS = 64


def _has_stats(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
            or pa.types.is_floating(t))


def _column_bounds(meta: Any, j: int) -> tuple[int, Any, Any] | None:
    """(null count, min, max) of column `j` over every row group; min and max None when no row
    group has a non-null value; None when a row group lacks statistics or a bound cannot be kept."""
    nulls, low, high = 0, None, None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(j).statistics
        if stats is None or stats.null_count is None:
            return None
        nulls += int(stats.null_count)
        if not stats.has_min_max:
            if stats.num_values:
                return None
            continue
        for value in (stats.min, stats.max):
            if isinstance(value, bytes) or (isinstance(value, str) and len(value) > STATS_CHARS) or (
                    isinstance(value, float) and value != value):
                return None
        low = stats.min if low is None else min(low, stats.min)
        high = stats.max if high is None else max(high, stats.max)
    return nulls, low, high


def _merged(current: Schema, wanted: Schema) -> Schema:
    """`wanted` plus the columns of `current` it lacks (older parts still hold them): the table's
    columns only grow while its parts stay, as `Workspace.read` unifies the parts' schemas."""
    now, new = json.loads(current.to_json()), json.loads(wanted.to_json())
    if all(f in now["fields"] for f in new["fields"]):
        return current  # nothing new (a narrower append, or the same columns in another order)
    names = {f["name"] for f in new["fields"]}
    new["fields"] += [f for f in now["fields"] if f["name"] not in names]
    return Schema.from_json(json.dumps(new))


def _type_problem(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        return _type_problem(t.value_type)
    if pa.types.is_fixed_size_list(t):
        return f"{t}: Delta has no fixed-size list type"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _type_problem(t.value_type)
    if pa.types.is_struct(t):
        return next((w for i in range(t.num_fields) if (w := _type_problem(t.field(i).type))), None)
    if pa.types.is_map(t):
        return _type_problem(t.key_type) or _type_problem(t.item_type)
    if pa.types.is_timestamp(t):
        return None if t.unit == "us" else f"{t}: Delta timestamps are microseconds"
    plain = (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t)
             or pa.types.is_signed_integer(t) or pa.types.is_float32(t) or pa.types.is_float64(t)
             or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_date32(t)
             or pa.types.is_decimal128(t))
    return None if plain else f"{t} has no Delta Lake type"


def _tell_once(ws: Workspace, table: str, why: str, more: str = "") -> None:
    """One log line per table and reason in a process, not one per commit."""
    key = (ws.path(table), why)
    with _told_lock:
        if key in _told:
            return
        _told.add(key)
    log.warning("table %s: no Delta log, %s%s; synpref reads and writes it as before", table, why, more)
