"""Checking a workspace against its manifests: every listed part present, whole and unaltered.

A part is damaged when it is missing, has another size or sha256 than its manifest records,
does not parse, or holds another number of rows. Part files that no manifest lists are orphans:
a writer killed before its commit, or a commit that lost a keyed race, leaves them behind.
Nobody reads them, so they are harmless; they are reported so that their count (and bytes) is
known. A Delta log (pipeline/store_delta.py) that lists other parts than the manifest is reported
too, as harmless to synpref: only other engines read it, and the next commit brings it in line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import store_delta
from pipeline.store_commit import COMMIT_LOCK, MANIFEST

if TYPE_CHECKING:
    from pipeline.store import Workspace

ORPHAN = "orphan"
DELTA = "delta"
KINDS = ("missing", "size", "sha256", "unreadable", "rows", "manifest", ORPHAN, DELTA)
HARMLESS = (ORPHAN, DELTA)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a table: `kind` is one of KINDS, `file` the part (or the manifest)."""

    table: str
    file: str
    kind: str
    detail: str

    @property
    def damaged(self) -> bool:
        """True unless the problem is a harmless orphan file or a stale Delta log."""
        return self.kind not in HARMLESS

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "damaged": self.damaged}


def table_names(ws: Workspace) -> list[str]:
    """Every table of the workspace, nested ones (`rounds/1/retrieved`) included."""
    suffix = f"/{MANIFEST}"
    found = [p for p in ws.fs.find(ws.root) if p.endswith(suffix)]
    root = ws.root.rstrip("/") + "/"
    return sorted(p[: -len(suffix)].removeprefix(root).lstrip("/") for p in found)


def verify_workspace(ws: Workspace, table: str | None = None) -> list[Problem]:
    """The problems of `table`, or of every table when None; an empty list means all is well."""
    problems: list[Problem] = []
    for name in [table] if table is not None else table_names(ws):
        problems.extend(_verify_table(ws, name))
    return problems


def _verify_table(ws: Workspace, table: str) -> list[Problem]:
    try:
        manifest = ws.read_json(f"{table}/{MANIFEST}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [Problem(table, MANIFEST, "manifest", f"unreadable: {exc}")]
    if manifest is None:
        return [Problem(table, MANIFEST, "manifest", "no such table (no manifest)")]
    problems = [p for shard in manifest.get("shards", []) if (p := _verify_part(ws, table, shard))]
    listed = {s["file"] for s in manifest.get("shards", [])}
    for info in ws.fs.ls(ws.path(table), detail=True):
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if info.get("type") != "file" or name in listed or name in (MANIFEST, COMMIT_LOCK):
            continue
        if name.startswith("part-") or ".tmp-" in name:
            problems.append(Problem(table, name, ORPHAN, f"{info.get('size', 0)} bytes, in no manifest"))
    return problems + _verify_delta(ws, table, listed)


def _verify_delta(ws: Workspace, table: str, listed: set[str]) -> list[Problem]:
    try:
        files = store_delta.delta_files(ws, table)
    except Exception as exc:
        return [Problem(table, store_delta.LOG_DIR, DELTA, f"the Delta log does not load: {exc}")]
    if files is None or files == listed:
        return []
    return [Problem(table, store_delta.LOG_DIR, DELTA, f"the Delta log lists {len(files - listed)} parts "
                    f"the manifest does not and lacks {len(listed - files)} of its parts; the next "
                    f"commit (or store_delta.ensure) brings it in line")]


def _verify_part(ws: Workspace, table: str, shard: dict[str, Any]) -> Problem | None:
    file = shard["file"]
    try:
        data = ws.read_bytes(f"{table}/{file}")
    except FileNotFoundError:
        return Problem(table, file, "missing", "listed in the manifest, not on disk")
    recorded = int(shard.get("bytes") or 0)
    if recorded and len(data) != recorded:
        return Problem(table, file, "size", f"{len(data)} bytes, the manifest records {recorded}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != shard["sha256"]:
        return Problem(table, file, "sha256", f"content altered: sha256 {digest[:12]}..., "
                       f"the manifest records {shard['sha256'][:12]}...")
    try:
        rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        return Problem(table, file, "unreadable", f"not a Parquet file: {exc}")
    if rows != int(shard["rows"]):
        return Problem(table, file, "rows", f"{rows} rows, the manifest records {shard['rows']}")
    return None
