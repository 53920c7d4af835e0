"""Key indexes: a table's key columns in buckets of the pair_id's first two hex characters.

Telling new pairs from repeats (ingest) and active pairs from dropped ones (stage tasks) used to
read every key of the table into one process: memory and reads grew with the pool. An index keeps
the keys of `pool` or `dropped` in per-bucket Parquet files under `_keys/<table>/bucket=<xx>/`
(256 buckets for hex ids), so a caller holds one bucket's keys at a time and a small batch opens
only the buckets its own ids fall in.

The index names the table parts it covers (`_keys/<table>/_index.json`). A reader first indexes
the parts the table's manifest lists and the index does not (parts of an older synpref, or of a
writer that does not index its own), a chunk of parts at a time, so an existing workspace gains
its index on first need. Index files are written first and named by the index's manifest after,
in one rename under the index's lock (the store's commit lock), so readers see the old index or
the new one and a lost race leaves only files nobody reads (they are deleted). Covering parts
that the table no longer lists (a replace) starts the index over. A bucket with more than
`MERGE_AT` files has its smaller files merged into one
(a file holding more keys than all the smaller ones together stays).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow.parquet as pq

from pipeline.store import raise_if_disk_full
from pipeline.store_commit import commit_lock

if TYPE_CHECKING:
    from pipeline.store import Workspace

ROOT = "_keys"
STATE = "_index.json"
MERGE_AT = 16
LOOKUP_BUCKETS = 16
"""Buckets one lookup read takes: about 4x faster than a read per file for a 100k-id batch here."""
"""Files a bucket may have before they are merged: reads per bucket stay bounded."""
CHUNK_ROWS = 500_000
"""Table rows indexed per step when an index catches up (its memory while it does)."""
_HEX_PREFIX = r"^[0-9a-f]{2}$"
INGEST_STAGE = "ingest"
"""`dropped` rows of this stage are source rows that never entered the pool (ties, undecidable
majorities, repeats of a pooled pair), keyed by their origin: they remove no pooled pair."""


def bucket_expr(column: str = "pair_id") -> pl.Expr:
    """The bucket of an id: its first two characters when they are lowercase hex (every pair_id
    and origin key), else `x` + the hex of its first two characters (a stable, path-safe name)."""
    prefix = pl.col(column).str.slice(0, 2)
    return (pl.when(prefix.str.contains(_HEX_PREFIX)).then(prefix)
            .otherwise(pl.lit("x") + prefix.str.encode("hex"))).alias("bucket")


def buckets_of(ids: pl.Series) -> list[str]:
    """The distinct buckets of `ids`, sorted."""
    frame = pl.DataFrame({"pair_id": ids}).select(bucket_expr())
    return sorted(frame["bucket"].unique().to_list())


@dataclass
class IndexState:
    """What an index holds: per covered table part a number (see `KeyIndex.part_meta`), per bucket
    its files (name, rows)."""

    covers: dict[str, int] = field(default_factory=dict)
    files: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    version: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "covers": self.covers, "files": self.files}


@dataclass(frozen=True)
class KeyIndex:
    """The key index of `table`: `read` columns of its parts become `project`'s columns (pair_id
    first), and `part_meta` a number per part (the largest ingest_seq, the rows)."""

    table: str
    read: tuple[str, ...]
    project: Callable[[pl.DataFrame], pl.DataFrame]
    part_meta: Callable[[pl.DataFrame], int]

    @property
    def folder(self) -> str:
        return f"{ROOT}/{self.table}"

    def state(self, ws: Workspace) -> IndexState:
        data = ws.read_json(f"{self.folder}/{STATE}")
        if data is None:
            return IndexState()
        return IndexState(dict(data["covers"]), {b: list(f) for b, f in data["files"].items()},
                          int(data["version"]))

    def sync(self, ws: Workspace, shards: list[dict[str, Any]] | None = None) -> IndexState:
        """The index, made to cover every part of `shards` (default: the table's manifest)."""
        if shards is None:
            shards = ws.manifest(self.table)["shards"] if ws.has_table(self.table) else []
        state = self.state(ws)
        if set(state.covers) - {s["file"] for s in self._current(ws)}:
            state = self._restart(ws, state)
        while missing := [s for s in shards if s["file"] not in state.covers]:
            chunk, rows = [], 0
            for s in missing:
                if chunk and rows + int(s["rows"]) > CHUNK_ROWS:
                    break
                chunk.append(s)
                rows += int(s["rows"])
            covers, frames = {}, []
            for s in chunk:
                part = pl.from_arrow(pq.read_table(ws.path(self.table, s["file"]), columns=list(self.read),
                                                   filesystem=ws.fs))
                assert isinstance(part, pl.DataFrame)
                covers[s["file"]] = self.part_meta(part)
                frames.append(self.project(part))
            keys = pl.concat(frames) if frames else pl.DataFrame()
            state = self.add(ws, covers, _by_bucket(keys))
        return state

    def add(self, ws: Workspace, covers: dict[str, int],
            buckets: Iterable[tuple[str, pl.DataFrame]]) -> IndexState:
        """Index the keys of the table parts `covers` names, given bucket by bucket; a no-op when
        another writer indexed any of those parts first."""
        written: dict[str, list[dict[str, Any]]] = {}
        for bucket, keys in buckets:
            if keys.height:
                written.setdefault(bucket, []).append(self._write(ws, bucket, keys))
        return self._add_written(ws, covers, written)

    def stage(self, ws: Workspace, folder: str, bucket: str, keys: pl.DataFrame) -> dict[str, Any]:
        """A bucket's keys as an index file under `folder` (a writer's scratch, where no reader
        looks), for `add_staged` to move into the index once the parts they cover are committed:
        a task that tells new keys writes their index files itself, and the committing process
        only moves them."""
        return self._write(ws, bucket, keys, root=folder)

    def add_staged(self, ws: Workspace, covers: dict[str, int], folder: str,
                   staged: dict[str, list[dict[str, Any]]]) -> IndexState:
        """`add` for keys already written by `stage` under `folder` ({bucket: [file entries]}):
        the files are moved into the index's buckets (a rename on a local disk), then listed in one
        commit; refused (another writer indexed those parts first), they are deleted."""
        for bucket, files in sorted(staged.items()):
            target = ws.path(self.folder, f"bucket={bucket}")
            ws.fs.makedirs(target, exist_ok=True)
            for entry in files:
                ws.fs.mv(ws.path(folder, f"bucket={bucket}", entry["file"]), f"{target}/{entry['file']}")
        return self._add_written(ws, covers, staged)

    def staged_without(self, ws: Workspace, folder: str, staged: dict[str, list[dict[str, Any]]],
                       gone: pl.Series) -> dict[str, list[dict[str, Any]]]:
        """`staged` index files (under `folder`) less the keys of `gone`: the files of the buckets
        that hold one of them are written again without them; the others stay as they are."""
        hit = set(buckets_of(gone))
        out: dict[str, list[dict[str, Any]]] = {}
        for bucket, files in staged.items():
            if bucket not in hit:
                out[bucket] = files
                continue
            for entry in files:
                keys = self._read_paths(ws, [ws.path(folder, f"bucket={bucket}", entry["file"])])
                keys = keys.filter(~pl.col("pair_id").is_in(gone.implode()))
                if keys.height:
                    out.setdefault(bucket, []).append(self.stage(ws, folder, bucket, keys))
        return out

    def _add_written(self, ws: Workspace, covers: dict[str, int],
                     written: dict[str, list[dict[str, Any]]]) -> IndexState:
        def change(state: IndexState) -> bool:
            if set(covers) & set(state.covers):
                return False
            state.covers.update(covers)
            for bucket, files in written.items():
                state.files.setdefault(bucket, []).extend(files)
            return True

        state = self._commit(ws, change, written)
        for bucket in sorted(written):
            if len(state.files.get(bucket, [])) > MERGE_AT:
                state = self._merge(ws, bucket, state)
        return state

    def moved(self, ws: Workspace, old: list[str], new: dict[str, int]) -> bool:
        """The keys of table parts `old` now live in parts `new` (a rewrite that keeps every row:
        pool compaction): the index covers `new` instead, its key files unchanged. False, and no
        change, when it does not cover every part of `old` (its next sync starts over)."""

        done = False

        def change(state: IndexState) -> bool:
            nonlocal done
            if not set(old) <= set(state.covers) or set(new) & set(state.covers):
                return False
            for file in old:
                del state.covers[file]
            state.covers.update(new)
            done = True
            return True

        self._commit(ws, change, {})
        return done

    def read_bucket(self, ws: Workspace, state: IndexState, bucket: str) -> pl.DataFrame | None:
        """Every indexed key of `bucket` (None when it has none). A file that a merge removed
        meanwhile sends the read to the latest state, whose merged file holds the same keys."""
        return self._read_buckets(ws, state, [bucket])

    def lookup(self, ws: Workspace, state: IndexState, ids: pl.Series) -> pl.DataFrame | None:
        """The indexed rows whose pair_id is among `ids`, reading only the buckets of `ids`
        (None when none is indexed): `LOOKUP_BUCKETS` buckets per read, so a big batch makes a few
        reads of many files instead of one read per file, and holds that many buckets at most."""
        wanted = pl.DataFrame({"pair_id": ids.cast(pl.Utf8)}).with_columns(bucket_expr())
        buckets = sorted({str(b) for b in wanted["bucket"].unique().to_list()})
        found = []
        for start in range(0, len(buckets), LOOKUP_BUCKETS):
            group = buckets[start:start + LOOKUP_BUCKETS]
            keys = self._read_buckets(ws, state, group)
            if keys is not None:
                want = wanted.filter(pl.col("bucket").is_in(group)).select("pair_id").unique()
                hit = keys.join(want, on="pair_id", how="semi")
                if hit.height:
                    found.append(hit)
        return pl.concat(found) if found else None

    def _read_buckets(self, ws: Workspace, state: IndexState, buckets: list[str]) -> pl.DataFrame | None:
        """Every indexed key of `buckets`, in one read (None when they have none); a file that a
        merge removed meanwhile sends the read to the latest state, as `read_bucket` does."""
        for _ in range(3):
            paths = [ws.path(self.folder, f"bucket={b}", f["file"]) for b in buckets
                     for f in state.files.get(b, [])]
            if not paths:
                return None
            try:
                return self._read_paths(ws, paths)
            except FileNotFoundError:
                state = self.state(ws)
        raise FileNotFoundError(f"{ws.path(self.folder)}: buckets {buckets[0]}-{buckets[-1]} kept changing "
                                "while they were read")

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _read_paths(ws: Workspace, paths: list[str]) -> pl.DataFrame:
        if ws.is_local:
            return pl.read_parquet(paths, glob=False, hive_partitioning=False)
        # `bucket=xx` folders are not columns of the keys
        frame = pl.from_arrow(pq.read_table(paths, filesystem=ws.fs, partitioning=None))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def _current(self, ws: Workspace) -> list[dict[str, Any]]:
        return list(ws.manifest(self.table)["shards"]) if ws.has_table(self.table) else []

    def _write(self, ws: Workspace, bucket: str, keys: pl.DataFrame,
               root: str | None = None) -> dict[str, Any]:
        name = f"keys-{uuid.uuid4().hex[:12]}.parquet"
        target = ws.path(root or self.folder, f"bucket={bucket}", name)
        ws.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        try:  # a unique name nobody reads before _index.json lists it: no temp file needed
            with ws.fs.open(target, "wb") as fh:
                pq.write_table(keys.sort("pair_id").to_arrow(), fh, compression="zstd")
        except BaseException as exc:
            with contextlib.suppress(OSError):
                ws.fs.rm(target)
            raise_if_disk_full(exc, target)
            raise
        return {"file": name, "rows": keys.height}

    def _commit(self, ws: Workspace, change: Callable[[IndexState], bool],
                written: dict[str, list[dict[str, Any]]]) -> IndexState:
        """Apply `change` to the latest state under the lock and write it; files of a refused
        change are deleted."""
        with commit_lock(ws, self.folder):
            state = self.state(ws)
            if change(state):
                state.version += 1
                ws.write_json(f"{self.folder}/{STATE}", state.as_json())
                return state
        for bucket, files in written.items():
            for f in files:
                ws.remove(f"{self.folder}/bucket={bucket}/{f['file']}")
        return state

    def _restart(self, ws: Workspace, old: IndexState) -> IndexState:
        """An empty index in place of one that covers parts the table no longer has."""
        with commit_lock(ws, self.folder):
            if self.state(ws).version != old.version:
                return self.state(ws)
            state = IndexState(version=old.version + 1)
            ws.write_json(f"{self.folder}/{STATE}", state.as_json())
        for bucket in old.files:
            ws.remove(f"{self.folder}/bucket={bucket}")
        return state

    def _merge(self, ws: Workspace, bucket: str, state: IndexState) -> IndexState:
        """One file in place of `bucket`'s smaller files, unless another writer changed them first.

        A file that holds more keys than all the smaller ones together stays as it is (`outweighing`),
        so a key is rewritten about log2(additions) times, not at every `MERGE_AT`-th addition: an
        index that grows by many ingests (one add per source) no longer rereads itself whole."""
        old = list(state.files[bucket])
        kept = outweighing(old)
        small = [f for f in old if f not in kept]
        if len(small) < 2:  # every file outweighs the smaller ones: the two smallest are merged
            small = sorted(old, key=lambda f: int(f["rows"]))[:2]
            kept = [f for f in old if f not in small]
        paths = [ws.path(self.folder, f"bucket={bucket}", f["file"]) for f in small]
        try:
            keys = self._read_paths(ws, paths)
        except FileNotFoundError:  # another writer merged them meanwhile
            return self.state(ws)
        merged = self._write(ws, bucket, keys)

        def change(current: IndexState) -> bool:
            if current.files.get(bucket) != old:
                return False
            current.files[bucket] = [*kept, merged]
            return True

        new = self._commit(ws, change, {bucket: [merged]})
        if new.files.get(bucket) == [*kept, merged]:
            for f in small:
                ws.remove(f"{self.folder}/bucket={bucket}/{f['file']}")
        return new


def outweighing(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The files a merge keeps: from the biggest down, each that holds more rows than all the
    smaller ones together (their sizes at least double, so there are about log2(rows) of them)."""
    ordered = sorted(files, key=lambda f: -int(f["rows"]))
    kept = []
    rest = sum(int(f["rows"]) for f in ordered)
    for f in ordered:
        rest -= int(f["rows"])
        if int(f["rows"]) <= rest:
            break
        kept.append(f)
    return kept


def _by_bucket(keys: pl.DataFrame) -> Iterator[tuple[str, pl.DataFrame]]:
    if not keys.height:
        return
    grouped = keys.with_columns(bucket_expr()).partition_by("bucket", as_dict=True)
    for (bucket,), frame in sorted(grouped.items()):
        yield str(bucket), frame.drop("bucket")


def _origin(frame: pl.DataFrame) -> pl.DataFrame:
    origin = pl.concat_str([pl.col("source"), pl.col("source_id")], separator="\x1f").alias("origin")
    return frame.select("pair_id", origin)


def _max_seq(frame: pl.DataFrame) -> int:
    top = frame["ingest_seq"].max() if frame.height else None
    return -1 if top is None else int(top)  # type: ignore[arg-type]


def _dropped_keys(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("pair_id", (pl.col("stage") == INGEST_STAGE).alias("ingest"))


POOL_KEYS = KeyIndex("pool", ("pair_id", "source", "source_id", "ingest_seq"), _origin, _max_seq)
"""(pair_id, origin) of every pooled pair; per part its largest ingest_seq."""

DROPPED_KEYS = KeyIndex("dropped", ("pair_id", "stage"), _dropped_keys, lambda f: f.height)
"""(pair_id, ingest) of every `dropped` row (ingest: a source row that never entered the pool)."""
