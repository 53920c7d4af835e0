"""RM scoring as a stage contract: one task per pool partition, each scoring its own rows.

The driver plans partitions from the pool's manifest (pipeline.stage.plan_partitions) and keeps
only receipts: which pairs a task scores is decided by the task from its own rows, never from an
id list cut by the driver. A task reads its partition, keeps the rows its selection names (the
active pool in a stage-1 round; stage 2's candidates and evaluation gold from the candidates
table, see pipeline.stage2_stage), leaves out pairs already scored for (round, model), scores the
rest with the model it is handed (one engine per worker process, flows.engines) and writes them
as one uncommitted part of `scores`. `commit` lands parts keyed by (pair_id, round, model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.covers import scan_meeting, tagged
from pipeline.parts import Receipt, commit_keyed_parts, write_part
from pipeline.stage import Partition, _Timed, read_partition
from pipeline.store import Workspace
from schemas.labels import SCORES_SCHEMA
from schemas.pair import POOL_SCHEMA, PairRecord

SCORES = "scores"
SCORE_KEY = ["pair_id", "round", "model"]
Select = Literal["active", "stage2"]
OpenModel = Callable[[], contextlib.AbstractContextManager[Any]]
"""Opens the reward model to score with (held for the duration of the `with` block)."""


def scored_among(ws: Workspace, round_: int, model: str, ids: pl.Series,
                 partition: Partition | None = None) -> pl.DataFrame:
    """(pair_id, p) already in `scores` for (round, model) among `ids` (first row per pair), by
    pair_id; with the pool `partition` the ids come from, only the parts that may hold its pairs
    are read (pipeline/covers.py)."""
    if not ws.has_table(SCORES) or ids.is_empty():
        return pl.DataFrame(schema={"pair_id": pl.Utf8, "p": pl.Float64})
    frame = (scan_meeting(ws, SCORES, partition, SCORES_SCHEMA)
             .filter((pl.col("round") == round_) & (pl.col("model") == model) & pl.col("pair_id").is_in(ids))
             .select("pair_id", "p").collect())
    return frame.unique("pair_id", keep="first").sort("pair_id")


@dataclass(frozen=True)
class ScoreStage:
    """Score the selected rows of each pool partition with the RM saved at `rm_dir`."""

    rm_dir: str
    round: int
    model: str
    select: Select = "active"
    name: ClassVar[str] = "score"

    def selected(self, ws: Workspace, partition: Partition) -> pl.DataFrame:
        """The partition's pool rows this stage scores (scored or not), in pool order."""
        if self.select == "stage2":
            from pipeline.stage2_stage import candidate_pool_rows

            return candidate_pool_rows(ws, partition)
        frames = list(read_partition(ws, partition, POOL_SCHEMA.names))
        if not frames:
            return pl.from_arrow(POOL_SCHEMA.empty_table())  # type: ignore[return-value]
        return pl.concat(frames).unique("pair_id", keep="first", maintain_order=True)

    def run(self, ws: Workspace, partition: Partition, open_model: OpenModel) -> Receipt:
        """Score the partition's selected rows not yet scored; one uncommitted part and a receipt."""
        timer = _Timed()
        rows = self.selected(ws, partition)
        done = scored_among(ws, self.round, self.model, rows["pair_id"], partition)
        todo = rows.join(done.select("pair_id"), on="pair_id", how="anti", maintain_order="left")
        parts: list[Receipt] = []
        if todo.height:
            records = [PairRecord.from_row(r) for r in todo.to_dicts()]
            with open_model() as model:  # one engine per worker process, one caller at a time
                raw = np.asarray(model.score(records), dtype=np.float64).reshape(len(records), 2)
            parts.append(tagged(write_part(ws, SCORES, self.table(records, raw)), partition))
        return timer.receipt(self.name, partition.index, rows.height, parts, scored=todo.height,
                             already_scored=done.height)

    def table(self, records: list[PairRecord], raw: np.ndarray) -> pa.Table:
        """Rows of `scores`: p = sigmoid(r_chosen - r_rejected), as every scoring shard computed it."""
        p = 1.0 / (1.0 + np.exp(-(raw[:, 0] - raw[:, 1])))
        return pa.table({
            "pair_id": [r.pair_id for r in records],
            "round": pa.array([self.round] * len(records), pa.int32()),
            "model": [self.model] * len(records),
            "r_chosen": raw[:, 0],
            "r_rejected": raw[:, 1],
            "p": p,
        }, schema=SCORES_SCHEMA)

    def commit(self, ws: Workspace, receipts: list[Receipt]) -> int:
        """Land the receipts' parts (in partition order) as one version of `scores`; rows written."""
        ordered = sorted(receipts, key=lambda r: int(r["task"]))
        return commit_keyed_parts(ws, SCORES, [p for r in ordered for p in r["parts"]], SCORES_SCHEMA,
                                  SCORE_KEY)
