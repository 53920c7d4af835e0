"""An ingest's new pairs: staged, told from repeats bucket by bucket, written as parts, committed once.

An ingest holds neither the pool's ids nor its own source's: memory follows a batch and one key
bucket, whatever the pool's size (it used to hold every (pair_id, origin) of the pool).

1. `stage`: each batch's rows go to a scratch file (Arrow IPC under `_ingest/<token>/`) and
   their (pair_id, origin, row) to key runs, split by the pair_id buckets of
   pipeline/key_index.py and spilled every `RUN_ROWS` rows.
2. `finish`: bucket by bucket, the source's keys meet that bucket of the pool's key index (caught
   up with the pool first): a row is new when its pair_id is neither pooled nor seen earlier in
   the source; a repeat from the same origin is already present, one from another origin a
   duplicate recorded in `dropped`. The buckets are split by jobs over ranges of buckets
   (pipeline/ingest_repeats.py), which can run as tasks on workers and write the new keys' index
   files themselves (staged in scratch); this process reads back only their repeated row numbers.
   Then the staged batches, less the repeats, become pool parts numbered from the pool's largest
   `ingest_seq`.
3. `commit`, under the pool's commit lock: when other writers committed pool parts since, the
   parts are rewritten once without the pairs those writers added and numbered after every
   committed pair, so `ingest_seq` stays unique and follows commit order.
4. `index`: the staged index files move into the pool's key index, listed in one commit of the
   index (the committing process reads no key, unless a concurrent writer took some of the pairs:
   then only the buckets of those pairs are rewritten without them).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import ingest_parts
from pipeline.ingest_parts import (
    KEY_RANGE,
    MAX_SEQ,
    RANGES,
    PartJob,
    RangeJob,
    WriteParts,
    left_seqs,
    range_cuts,
    range_jobs,
    renumbered,
)
from pipeline.ingest_repeats import (
    RUN_SCHEMA,
    KeyRun,
    SplitRepeats,
    duplicate_records,
    key_table,
    open_scratch,
    origins_of,
    write_chunks,
    write_scratch,
)
from pipeline.ingest_together import INDEX, tell_repeats, write_parts
from pipeline.key_index import POOL_KEYS, bucket_expr
from pipeline.parts import Receipt, conform, discard, read_part
from pipeline.store import Workspace, raise_if_disk_full
from pipeline.store_commit import Plan, commit, read_keys, shards_since
from schemas.pair import LEGACY_IMAGE_REF_TYPE, POOL_SCHEMA

POOL, SCRATCH = "pool", "_ingest"
RUN_ROWS = 250_000
"""Source keys buffered before they are spilled as one run (about 25 MB)."""


@dataclass
class IngestStats:
    source: str
    path: str
    format: str = ""
    rows_read: int = 0
    added: int = 0
    already_present: int = 0
    duplicates: int = 0
    quarantined: int = 0
    dropped: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each step after staging (repeats, parts, commit, index: the key index and the
    dropped and quarantined rows): where a source's commit spends its time, and how much of it
    ran as tasks (repeats, parts) or in the committing process."""

    def timed(self, phase: str, since: float) -> float:
        """Add the seconds since `since` to `phase`; now, for the next phase."""
        now = time.perf_counter()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - since, 3)
        return now

    @property
    def pairs_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "pairs_per_s": round(self.pairs_per_s, 1)}


@dataclass
class PoolParts:
    """One ingest's pairs on their way into the pool (see the module's steps)."""

    ws: Workspace
    schema: pa.Schema
    token: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    first_seq: int = 0
    parts: list[Receipt] = field(default_factory=list)
    late_duplicates: list[pa.Table] = field(default_factory=list)
    obsolete: list[str] = field(default_factory=list)
    staged: list[tuple[str, int]] = field(default_factory=list)
    runs: list[KeyRun] = field(default_factory=list)
    fresh_index: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    max_seq: dict[str, int] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    keep: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    cuts: list[str] | None = None
    trusted: set[str] = field(default_factory=set)
    """Parts committed since `seen` by sources written together with this one: their pairs are not
    this source's by construction, so they alone call for no rebase at commit."""
    _buffer: list[pl.DataFrame] = field(default_factory=list)
    _stats: IngestStats | None = None

    @classmethod
    def open(cls, ws: Workspace, token: str | None = None) -> PoolParts:
        """`token`: the scratch folder under `_ingest/` (a new one when None)."""
        return cls(ws, _pool_schema(ws), token or uuid.uuid4().hex[:12])

    def staged_receipt(self) -> dict[str, Any]:
        """What `stage` left in scratch (batches and key runs), for `adopt` in another process."""
        self.spill()
        return {"staged": [[path, rows] for path, rows in self.staged],
                "runs": [{"path": r.path, "batches": dict(r.batches)} for r in self.runs]}

    def adopt(self, receipt: dict[str, Any]) -> None:
        """Take over batches staged apart (`staged_receipt`), after the ones staged so far: the
        source's rows keep their order, as if this ingest had staged them itself."""
        self.spill()
        offset = self.staged_rows
        self.staged += [(str(path), int(rows)) for path, rows in receipt["staged"]]
        self.runs += [KeyRun(r["path"], {str(b): int(i) for b, i in r["batches"].items()}, offset)
                      for r in receipt["runs"]]

    @property
    def rows(self) -> int:
        return sum(int(p["rows"]) for p in self.parts)

    @property
    def staged_rows(self) -> int:
        return sum(rows for _, rows in self.staged)

    def scratch(self, name: str) -> str:
        return f"{SCRATCH}/{self.token}/{name}"

    def stage(self, pairs: pa.Table) -> None:
        """Keep a batch's pool rows (in scratch) and its keys (buffered, spilled in runs)."""
        if not pairs.num_rows:
            return
        first = self.staged_rows
        path = self.scratch(f"rows-{len(self.staged):06d}.arrow")
        write_chunks(self.ws, path, conform(pairs, self.schema))  # read back whole (write_staged_part)
        self.staged.append((path, pairs.num_rows))
        keys = origins_of(pairs).with_columns(row=pl.int_range(first, first + pairs.num_rows, dtype=pl.Int64))
        self._buffer.append(keys)
        if sum(k.height for k in self._buffer) >= RUN_ROWS:
            self.spill()

    def write_scratch(self, name: str, tables: list[pa.Table]) -> str | None:
        """Rows kept for later (a file's quarantine or dropped rows) as one scratch file; None when
        there are none."""
        rows = [t for t in tables if t.num_rows]
        if not rows:
            return None
        table = pa.concat_tables(rows)
        path = self.scratch(name)
        self._write_ipc(path, [table], table.schema)
        return path

    def read_scratch(self, path: str) -> pa.Table:
        with open_scratch(self.ws, path) as fh:
            return pa.ipc.open_file(fh).read_all()

    def finish(self, stats: IngestStats, write: WriteParts | None = None,
               split: SplitRepeats | None = None) -> pa.Table:
        """Tell new pairs from repeats, bucket by bucket, and write the new ones as pool parts;
        the duplicate records for `dropped`. `split`: how the repeat jobs run, `write`: how the
        parts' jobs run (tasks on workers; default: both here, on threads)."""
        [records] = tell_repeats(self.ws, [self], [stats], split)
        write_parts(self.ws, [self], [stats], write)
        return records

    def part_jobs(self) -> list[PartJob]:
        """The first wave of the kept rows' part jobs, numbered from `first_seq` in source order: a
        part per staged batch, or, from `ingest_parts.CLUSTER_ROWS` new pairs, the batch's pieces
        per range of pair_ids (merged into a part per range by the second wave, `range_jobs`)."""
        kept = int(self.keep.sum())
        self.cuts = None
        if kept >= ingest_parts.CLUSTER_ROWS:
            self.cuts = range_cuts(min(RANGES, max(1, -(-kept // ingest_parts.PART_ROWS))))
        jobs: list[PartJob] = []
        offset, seq = 0, self.first_seq
        for path, rows in self.staged:
            mask = self.keep[offset : offset + rows]
            if mask.any():
                out = self.scratch(f"pieces-{len(jobs):06d}.arrow")
                jobs.append(PartJob(path, mask, seq, self.schema, self.cuts, out))
            offset += rows
            seq += int(mask.sum())
        return jobs

    def range_jobs(self, pieces: list[Receipt]) -> list[RangeJob]:
        """The second wave (a clustered source's): each range's pieces merged into one part."""
        return range_jobs(pieces, self.schema, ingest_parts.GROUP_ROWS) if self.cuts is not None else []

    def take_parts(self, parts: list[Receipt], jobs: list[PartJob] | None = None) -> None:
        """The written parts: of the first wave (`jobs`, their numbering), or of the second."""
        for i, part in enumerate(parts):
            last = int(part.pop(MAX_SEQ)) if jobs is None else jobs[i].first + int(part["rows"]) - 1
            self.max_seq[part["file"]] = last
            self.parts.append(part)

    def commit(self, stats: IngestStats) -> None:
        if not self.parts:
            if not self.ws.has_table(POOL):
                self.ws.append(POOL, POOL_SCHEMA.empty_table())
            return
        self._stats = stats
        commit(self.ws, POOL, self)

    def index(self) -> None:
        """Add the committed pairs' keys to the pool's key index (once committed: the index
        covers only committed parts): the repeat jobs' staged index files are moved in."""
        if not self.parts or not self.fresh_index:
            return
        covers = {p["file"]: self.max_seq[p["file"]] for p in self.parts}
        folder, staged = self.scratch(INDEX), self.fresh_index
        if self.gone:  # pairs a concurrent writer committed first, left out of the parts by `_rebase`
            staged = POOL_KEYS.staged_without(self.ws, folder, staged,
                                              pl.Series("pair_id", sorted(self.gone), pl.Utf8))
        POOL_KEYS.add_staged(self.ws, covers, folder, staged)

    def discard(self) -> None:
        """Delete the uncommitted parts (a failed ingest)."""
        discard(self.ws, POOL, self.parts)

    def cleanup(self) -> None:
        self.ws.remove(f"{SCRATCH}/{self.token}")

    def abandon(self, exc: BaseException) -> None:
        """After a failure: delete the uncommitted parts and the scratch; a full disk becomes the
        store's disk-full error (the caller re-raises anything else)."""
        self.discard()
        self.cleanup()
        raise_if_disk_full(exc, self.scratch_uri)

    @property
    def scratch_uri(self) -> str:
        """Where this ingest stages its batches (named by a disk-full error)."""
        return self.ws.path(f"{SCRATCH}/{self.token}")

    def __call__(self, current: dict[str, Any] | None) -> Plan:
        shards = list(current["shards"]) if current else []
        fresh = shards_since(self.seen, shards)
        self.seen = shards
        if self.parts and any(s["file"] not in self.trusted for s in fresh):
            self._rebase(fresh)  # another writer committed meanwhile: checked against all fresh parts
        if not self.parts:
            return Plan(None if current is not None else [], self.schema, self.obsolete)
        return Plan([*shards, *self.parts], self.schema, self.obsolete)

    # -- internals -----------------------------------------------------------------------

    def _rebase(self, fresh: list[dict[str, Any]]) -> None:
        """Rewrite the parts after `fresh` shards (other writers' commits) as described above."""
        committed = read_keys(self.ws, POOL, fresh, ["pair_id", "source", "source_id", "ingest_seq"])
        top = committed["ingest_seq"].max() if committed.height else None
        # every commit numbers after all committed before it, so the latest parts hold the top
        first = self.first_seq if top is None else int(top) + 1  # type: ignore[arg-type]
        taken = origins_of(committed).rename({"origin": "known_origin"}).unique("pair_id")
        clashes = []
        for part in self.parts:  # one part's keys at a time
            mine = origins_of(read_part(self.ws, POOL, part, ["pair_id", "source", "source_id"]))
            clashes.append(mine.join(taken, on="pair_id", how="inner"))
        clash = pl.concat(clashes)
        if first == self.first_seq and clash.height == 0:
            return
        same = clash.filter(pl.col("origin") == pl.col("known_origin"))
        other = clash.filter(pl.col("origin") != pl.col("known_origin"))
        self.late_duplicates.append(duplicate_records(other))
        assert self._stats is not None
        self._stats.added -= clash.height
        self._stats.already_present += same.height
        self._stats.duplicates += clash.height - same.height
        gone = pa.array(clash["pair_id"].to_list(), pa.string())
        self.gone |= set(clash["pair_id"].to_list())
        order = left_seqs(self.ws, self.parts, gone)  # the rows left keep their source order
        parts = []
        for part in self.parts:
            rows = read_part(self.ws, POOL, part)
            if len(gone):
                rows = rows.filter(pc.invert(pc.is_in(rows.column("pair_id"), gone)))
            self.obsolete.append(part["file"])
            if rows.num_rows:
                seqs = first + np.searchsorted(order, rows.column("ingest_seq").to_numpy())
                rewritten = renumbered(self.ws, self.schema, rows, seqs, KEY_RANGE in part)
                self.max_seq[rewritten["file"]] = int(rewritten.pop(MAX_SEQ))
                parts.append(rewritten)
        self.parts, self.first_seq = parts, first

    def spill(self) -> None:
        if not self._buffer:
            return
        keys = pl.concat(self._buffer).with_columns(bucket_expr())
        self._buffer = []
        grouped = keys.partition_by("bucket", as_dict=True, maintain_order=True)
        batches = [(str(b), key_table(frame.drop("bucket"))) for (b,), frame in sorted(grouped.items())]
        self.runs.append(self._write_run(f"keys-{len(self.runs):06d}.arrow", batches))

    def _write_run(self, name: str, batches: list[tuple[str, pa.Table]]) -> KeyRun:
        path = self.scratch(name)
        kept = [(b, t) for b, t in batches if t.num_rows]
        self._write_ipc(path, [t for _, t in kept], RUN_SCHEMA)
        return KeyRun(path, {b: i for i, (b, _) in enumerate(kept)})

    def _write_ipc(self, path: str, tables: list[pa.Table], schema: pa.Schema) -> None:
        write_scratch(self.ws, path, tables, schema)


def _pool_schema(ws: Workspace) -> pa.Schema:
    """POOL_SCHEMA, or the older schema a pool was written with (its image refs lack width/height/
    format): one pool's shards keep one schema, so scans over all of them keep working."""
    stored = ws.manifest(POOL).get("schema") if ws.has_table(POOL) else None
    if not stored:
        return POOL_SCHEMA
    from pipeline.store import decode_schema

    schema = decode_schema(stored)
    legacy = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()),
                                 ("images", pa.list_(LEGACY_IMAGE_REF_TYPE))]))
    if schema.names == POOL_SCHEMA.names and schema.field("conversation").type == legacy:
        return schema
    return POOL_SCHEMA
