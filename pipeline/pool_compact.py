"""Pool compaction: the parts of small ingests rewritten as parts of pair_id ranges, as Delta
Lake's OPTIMIZE rewrites small files.

Why: an ingest of fewer than `ingest_parts.CLUSTER_ROWS` new pairs writes a part per staged batch
in source order, and every lookup of ids (`pipeline.pool.pool_rows`: scoring and judging shards)
reads every such part. A pool built from many small ingests (a source per round) gets the
clustered layout of a big ingest here (`synpref compact`).

How: the two waves of a clustered ingest (pipeline/ingest_parts.py). A job per loose part sorts
its rows by pair_id and cuts them into the ranges' pieces (scratch under `_compact/<token>/`);
a job per range merges its pieces into one part. Every column is kept, `ingest_seq` included, so
every stage decides as before. One commit, under the pool's lock, puts the new parts where the
first loose part was and drops the loose ones, only if every loose part is still listed (else a
concurrent compaction or rewrite won: this one deletes its parts and says so). Parts committed
meanwhile by other writers stay as they are. The pool's key index keeps its key files and covers
the new parts instead of the old. A record of which parts became which
(`pool/_compactions/<token>.json`) lets side-table parts whose `covers` name a compacted part
meet only the partitions that hold the new parts (pipeline/covers.py).

Run it between rounds: a stage planned before the commit would read parts the commit deletes.
A curate run's clean step runs it first, before any stage is planned, once the loose parts hold
`clean.compact_rows` pairs (flows/clean.py `compact_flow`, its jobs as tasks on the runner).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from pipeline import ingest_parts
from pipeline.covers import MOVED
from pipeline.ingest_parts import (
    KEY_RANGE,
    MAX_SEQ,
    RANGES,
    LooseJob,
    WriteParts,
    in_threads,
    range_cuts,
    range_jobs,
)
from pipeline.key_index import POOL_KEYS
from pipeline.parts import Receipt, discard
from pipeline.store import Workspace, decode_schema
from pipeline.store_commit import Plan, commit

POOL, SCRATCH = "pool", "_compact"


@dataclass
class CompactStats:
    loose_parts: int = 0
    rows: int = 0
    parts_written: int = 0
    committed: bool = False
    index_kept: bool = False
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def loose_parts(ws: Workspace) -> list[dict[str, Any]]:
    """The pool parts that hold rows and no key range (small ingests' parts, in source order)."""
    shards = ws.manifest(POOL)["shards"] if ws.has_table(POOL) else []
    return [s for s in shards if KEY_RANGE not in s and int(s["rows"])]


def compact_pool(ws: Workspace, *, run: WriteParts | None = None) -> CompactStats:
    """Rewrite the pool's loose parts as clustered parts (see the module's steps); `run` runs a
    wave's jobs (default: `ingest_parts.in_threads`; `write_staged_part` runs one anywhere).
    Nothing changes when the loose rows would make fewer than two ranges."""
    loose = loose_parts(ws)
    stats = CompactStats(len(loose), sum(int(s["rows"]) for s in loose))
    ranges = min(RANGES, math.ceil(stats.rows / ingest_parts.PART_ROWS)) if stats.rows else 0
    if ranges < 2:
        stats.reason = f"{stats.rows} loose rows make fewer than two ranges of {ingest_parts.PART_ROWS}"
        return stats
    schema = decode_schema(ws.manifest(POOL)["schema"])
    folder = f"{SCRATCH}/{uuid.uuid4().hex[:12]}"
    cuts = range_cuts(ranges)
    run = run if run is not None else (lambda jobs: in_threads(ws, jobs))
    parts: list[Receipt] = []
    try:
        first = [LooseJob(s["file"], cuts, f"{folder}/pieces-{i:06d}.arrow") for i, s in enumerate(loose)]
        pieces = run(first)
        parts = run(range_jobs(pieces, schema, ingest_parts.GROUP_ROWS))
        seqs = {p["file"]: int(p.pop(MAX_SEQ)) for p in parts}
        stats.parts_written = len(parts)
        stats.committed = commit(ws, POOL, _Replace(loose, parts, schema)).shards is not None
    except BaseException:
        discard(ws, POOL, parts)
        raise
    finally:
        ws.remove(folder)
    if not stats.committed:
        discard(ws, POOL, parts)
        stats.reason = "another writer changed the loose parts first; nothing was replaced"
        return stats
    stats.index_kept = POOL_KEYS.moved(ws, [s["file"] for s in loose], seqs)
    # side-table parts tagged with the loose parts' rows keep meeting only the partitions that
    # hold the new parts (pipeline/covers.py); a crash before this write leaves them read by all
    ws.write_json(f"{POOL}/{MOVED}/{folder.rsplit('/', 1)[1]}.json",
                  {"replaced": sorted(s["file"] for s in loose), "parts": [p["file"] for p in parts]})
    return stats


@dataclass
class _Replace:
    """The commit: the new parts in place of the loose ones, if all of them are still listed."""

    loose: list[dict[str, Any]]
    parts: list[Receipt]
    schema: pa.Schema

    def __call__(self, current: dict[str, Any] | None) -> Plan:
        shards = list(current["shards"]) if current else []
        names = {s["file"] for s in self.loose}
        if not names <= {s["file"] for s in shards}:
            return Plan(None)
        at = next(i for i, s in enumerate(shards) if s["file"] in names)  # every part before it stays
        kept = [s for s in shards if s["file"] not in names]
        return Plan([*kept[:at], *self.parts, *kept[at:]], self.schema, sorted(names))
