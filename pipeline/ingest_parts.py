"""An ingest's pool parts: each staged batch, less its repeats, numbered and written as one part.

The jobs are planned by pipeline/ingest_pool.py once the repeats are known; each one reads only
its own scratch batch, so they can run anywhere that sees the workspace (tasks on the ingest
flow's workers) and give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.parts import Receipt, write_part
from pipeline.store import Workspace

POOL = "pool"


@dataclass
class PartJob:
    """One staged batch to write as a pool part: the rows `keep` leaves, numbered from `first`."""

    path: str
    keep: np.ndarray
    first: int
    schema: pa.Schema


WriteParts = Callable[[list[PartJob]], list[Receipt]]
"""Runs part jobs (anywhere that sees the workspace); their receipts in the jobs' order."""


def write_staged_part(ws: Workspace, job: PartJob) -> Receipt:
    """A staged batch, less its repeats, as one uncommitted pool part; its receipt."""
    target = ws.path(job.path)
    with pa.OSFile(target, "rb") if ws.is_local else ws.fs.open(target, "rb") as fh:
        rows = pa.ipc.open_file(fh).read_all()
    if not job.keep.all():
        rows = rows.filter(pa.array(job.keep))
    return numbered_part(ws, job.schema, rows, job.first)


def numbered_part(ws: Workspace, schema: pa.Schema, rows: pa.Table, first: int) -> Receipt:
    seqs = pa.array(np.arange(first, first + rows.num_rows, dtype=np.int64))
    rows = rows.set_column(rows.schema.get_field_index("ingest_seq"), "ingest_seq", seqs)
    return write_part(ws, POOL, rows, schema)
