"""The round-1 batches (the humans' seed, the judges' silver seed) chosen by partition tasks.

`choose_priority_batch` ranks a pair within its own (tier, stratum) by a hash of its id, so a
batch of `size` takes at most `size` pairs of any one. A task reads its partition's active pairs
with their attributes, leaves out the labeled ones among its own ids (the `exclude_tables`) and
returns, per batch, the first `size` of each (tier, stratum) (`priority_candidates`): bounded by
the batch sizes and the number of strata, never by the partition. `Gathered` prunes what arrives
the same way, so the driver holds at most that many rows per batch, and choosing from them gives
the batch chosen from the whole pool, for any partitioning or runner. The driver used to hold the
whole active pool with its attributes (and every labeled id) to choose.

Pre-verification (R1V2's, `rules`): a task first runs the rule verifiers over its objective
active pairs (their judgments committed chunk by chunk, tagged with the partition), then leaves
the pairs a verifier decided, with no verifier disagreeing, out of the batches that ask for it
(`skip_verified`): they need no human check. That used to list every objective pair of the pool
in the driver and judge them in one task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import polars as pl

from pipeline.consistency import priority_candidates
from pipeline.covers import scan_meeting
from pipeline.partitions import Partition, read_partition
from pipeline.parts import Receipt
from pipeline.pool import ids_in_tables
from pipeline.stage import _Timed
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA
from schemas.config.judges import JudgeConfig
from schemas.pair import POOL_SCHEMA, PairRecord

ATTRIBUTES = ("task_category", "objectivity", "controversiality")
CANDIDATES = {c: pl.String for c in ("pair_id", "source", "label_source", *ATTRIBUTES)}


@dataclass(frozen=True)
class Batch:
    """One batch's share of a partition: `size` candidates per (tier, stratum) in `seed`'s order,
    of the pairs with a human source label only (`human_labels_only`), of `sources` only (when
    set), less `exclude`."""

    size: int
    seed: int
    human_labels_only: bool = False
    sources: tuple[str, ...] = ()
    exclude: frozenset[str] = frozenset()
    skip_verified: bool = False


@dataclass(frozen=True)
class PriorityStage:
    """Every batch's candidates among a partition's active, unlabeled pairs."""

    batches: tuple[Batch, ...]
    exclude_tables: tuple[str, ...] = ()
    rules: tuple[JudgeConfig, ...] = ()
    round: int = 1
    seed: int = 0
    name: ClassVar[str] = "priority"

    def run(self, ws: Workspace, partition: Partition) -> Receipt:
        timer = _Timed()
        # the rules judge whole pairs: the partition is then read with every column, once
        columns = POOL_SCHEMA.names if self.rules else ["pair_id", "source", "label_source"]
        frames = list(read_partition(ws, partition, columns))
        pool = (pl.concat(frames).unique("pair_id", keep="first", maintain_order=True) if frames
                else pl.from_arrow(POOL_SCHEMA.empty_table()).select(columns))
        assert isinstance(pool, pl.DataFrame)
        rows = pool.select("pair_id", "source", "label_source").join(
            attributes_of(ws, pool["pair_id"], partition), on="pair_id", how="left", maintain_order="left")
        verified = self._pre_verified(ws, partition, pool, rows)
        labeled = ids_in_tables(ws, self.exclude_tables, rows["pair_id"])
        rows = rows.filter(~pl.col("pair_id").is_in(labeled.implode()))
        out = []
        for batch in self.batches:
            chosen = rows
            if batch.human_labels_only:
                chosen = chosen.filter(pl.col("label_source") == "human")
            if batch.sources:
                chosen = chosen.filter(pl.col("source").is_in(list(batch.sources)))
            exclude = set(batch.exclude) | (verified if batch.skip_verified else set())
            found = priority_candidates(chosen, batch.size, batch.seed, exclude=exclude or None)
            out.append(found.select(list(CANDIDATES)).to_dict(as_series=False))
        return timer.receipt(self.name, partition.index, rows.height + labeled.len(), [], candidates=out,
                             verified=len(verified))

    def _pre_verified(self, ws: Workspace, partition: Partition, pool: pl.DataFrame,
                      rows: pl.DataFrame) -> set[str]:
        """The rules run over the partition's objective pairs (`pool`: their rows, `rows`: with
        their attributes); those a verifier decided."""
        if not self.rules:
            return set()
        from pipeline.judges import build_judges, judge_pairs
        from pipeline.judges.rules import verifier_decided

        objective = rows.filter(pl.col("objectivity") == "objective")["pair_id"].sort()
        if objective.is_empty():
            return set()
        full = pool.filter(pl.col("pair_id").is_in(objective.implode())).sort("pair_id")
        records = [PairRecord.from_row(r) for r in full.to_dicts()]
        judge_pairs(ws, build_judges(list(self.rules), ws=ws), full["pair_id"].to_list(), self.round,
                    self.seed, records=records, partition=partition)
        if not ws.has_table("judgments"):  # the rules wrote nothing: no pair has a checkable answer
            return set()
        judged = (scan_meeting(ws, "judgments", partition)
                  .filter(pl.col("pair_id").is_in(objective.implode())).collect())
        return verifier_decided(judged, round=self.round, judges=[j.name for j in self.rules])


def attributes_of(ws: Workspace, ids: pl.Series, partition: Partition | None = None) -> pl.DataFrame:
    """(pair_id, task_category, objectivity, controversiality) of `ids`, the first row per pair,
    from the attributes parts that may hold `partition`'s pairs."""
    if not ws.has_table("attributes") or ids.is_empty():
        return pl.DataFrame(schema={"pair_id": pl.String, **{c: pl.String for c in ATTRIBUTES}})
    frame = (scan_meeting(ws, "attributes", partition, ATTRIBUTES_SCHEMA).select("pair_id", *ATTRIBUTES)
             .filter(pl.col("pair_id").is_in(ids.implode())).collect())
    return frame.unique("pair_id", keep="first", maintain_order=True)


@dataclass
class Gathered:
    """Each batch's candidates over the receipts merged so far, pruned as they arrive."""

    stage: PriorityStage
    frames: list[pl.DataFrame] = field(default_factory=list)
    examined: int = 0
    verified: int = 0
    tasks: int = 0

    def __post_init__(self) -> None:
        self.frames = [pl.DataFrame(schema=CANDIDATES) for _ in self.stage.batches]

    def merge(self, receipts: list[Receipt]) -> None:
        """Fold the receipts' candidates in; they leave the receipts (the driver keeps counts)."""
        arrived = [r.pop("candidates") for r in receipts]
        for i, batch in enumerate(self.stage.batches):
            frame = pl.concat([self.frames[i], *(pl.DataFrame(c[i], schema=CANDIDATES) for c in arrived)])
            self.frames[i] = priority_candidates(frame, batch.size, batch.seed).select(list(CANDIDATES))
        self.tasks += len(receipts)
        self.examined += sum(int(r["examined"]) for r in receipts)
        self.verified += sum(int(r["verified"]) for r in receipts)


def run_local(ws: Workspace, stage: PriorityStage, partitions: list[Partition], gathered: Gathered) -> None:
    """The stage's tasks in this process, one partition after another."""
    for partition in partitions:
        gathered.merge([stage.run(ws, partition)])
