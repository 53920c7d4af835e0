"""Stage 2 as a stage contract: candidates, routing and decisions per pool partition.

The driver never holds the candidates. One task per pool partition writes that partition's rows
of the candidates table (`stage2/candidates`: the active pairs no human or judge has labeled,
role `candidate`, and the evaluation-gold pairs the RMs are measured on, role `eval`), tagged
with the partition index; every later task of stage 2 (scoring, judging, decisions) reads the
rows of its own partition back by that index (one part per partition, so the scan skips the
others). A decision task joins its candidates with both RMs' scores and the judges' votes on
them, applies filters A, B and flip-recycling through the gates (pipeline.gates) with the small
global facts the trust step measured on evaluation gold (reliability, calibration, noise prior),
and writes its decisions as one part; the driver commits every part once and sums the receipts'
counts. Each decision depends only on its own pair and those global facts, so the rows do not
depend on the partitioning, the runner or the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.consistency import decisions_table, final_decisions
from pipeline.covers import scan_meeting, tagged
from pipeline.gates import Trust, gated_stage2_decisions
from pipeline.parts import Receipt, commit_keyed_parts, write_part
from pipeline.pool import INGEST_STAGE
from pipeline.score_stage import scored_among
from pipeline.stage import Partition, _Timed, plan_partitions, read_partition
from pipeline.store import Workspace
from schemas.labels import (
    DECISIONS_SCHEMA,
    GOLD_SPLIT_SCHEMA,
    JUDGMENTS_SCHEMA,
    LABELS_SCHEMA,
    VERIFICATIONS_SCHEMA,
)
from schemas.pair import DROPPED_SCHEMA

CANDIDATES = "stage2/candidates"
CANDIDATES_PLAN = "stage2/candidates-plan.json"
"""The partitioning the candidates table was written by: every later stage-2 task uses it."""
CANDIDATE, EVAL = "candidate", "eval"
CANDIDATES_SCHEMA = pa.schema([("pair_id", pa.string()), ("source", pa.string()), ("role", pa.string()),
                               ("partition", pa.int32())],
                              metadata={"synpref.schema": "stage2-candidates", "synpref.version": "1"})
"""Stage 2's candidates (role `candidate`) and evaluation gold (role `eval`), by pool partition."""
DECIDED = ("chosen", "rejected")
_NONE = pl.DataFrame(schema={"pair_id": pl.Utf8})
_IDS = {"pair_id": pl.Utf8}


def _ids_in(ws: Workspace, table: str, schema: pa.Schema, ids: pl.Series,
            where: pl.Expr | None = None) -> pl.DataFrame:
    """The distinct pair_ids of `table` (rows matching `where`) among `ids`."""
    if not ws.has_table(table) or ids.is_empty():
        return pl.DataFrame(schema=_IDS)
    scan = ws.scan(table, schema=schema).filter(pl.col("pair_id").is_in(ids))
    if where is not None:
        scan = scan.filter(where)
    return scan.select("pair_id").unique().collect()


@dataclass(frozen=True)
class CandidateStage:
    """Writes each pool partition's rows of the candidates table."""

    rows_per_partition: int
    name: ClassVar[str] = "stage2-candidates"

    def partitions(self, ws: Workspace) -> list[Partition]:
        return plan_partitions(ws, self.rows_per_partition)

    def run(self, ws: Workspace, partition: Partition) -> Receipt:
        """One partition's candidates and evaluation-gold pairs as one uncommitted part."""
        timer = _Timed()
        frames = list(read_partition(ws, partition, ["pair_id", "source"], _NONE))
        rows = (pl.concat(frames) if frames else pl.DataFrame(schema=_IDS | {"source": pl.Utf8})
                ).unique("pair_id", keep="first", maintain_order=True)
        ids = rows["pair_id"]
        gone = _ids_in(ws, "dropped", DROPPED_SCHEMA, ids, pl.col("stage") != INGEST_STAGE)
        # Labeled: gold or silver labels (ties included) and human verifications (labeled_ids).
        gold_or_silver = pl.concat([_ids_in(ws, table, LABELS_SCHEMA, ids) for table in ("gold", "silver")])
        labeled = pl.concat([gold_or_silver, _ids_in(ws, "verifications", VERIFICATIONS_SCHEMA, ids)])
        # Evaluation gold (gold_part(ws, "eval")): decided gold labels of the split's eval part.
        in_eval = _ids_in(ws, "gold_split", GOLD_SPLIT_SCHEMA, ids, pl.col("part") == EVAL)
        eval_ids = _ids_in(ws, "gold", LABELS_SCHEMA, ids, pl.col("verdict").is_in(DECIDED)).join(
            in_eval, on="pair_id", how="semi")
        active = rows.join(gone, on="pair_id", how="anti", maintain_order="left")
        candidates = active.join(labeled, on="pair_id", how="anti", maintain_order="left")
        # The pool's composition as pool_counts gives it: active pairs with no gold or silver label.
        unlabeled = active.join(gold_or_silver, on="pair_id", how="anti").height
        evals = rows.join(eval_ids, on="pair_id", how="semi", maintain_order="left")
        out = pl.concat([candidates.with_columns(role=pl.lit(CANDIDATE)),
                         evals.with_columns(role=pl.lit(EVAL))]).with_columns(
            partition=pl.lit(partition.index, dtype=pl.Int32))
        parts = [tagged(write_part(ws, CANDIDATES, out.to_arrow(), CANDIDATES_SCHEMA), partition)] \
            if out.height else []
        return timer.receipt(self.name, partition.index, rows.height, parts, candidates=candidates.height,
                             eval=evals.height, unlabeled=unlabeled)

    def commit(self, ws: Workspace, receipts: list[Receipt]) -> dict[str, int]:
        """Land every partition's part (in partition order) as one version of the table, and
        record the partitioning it was written by."""
        ordered = sorted(receipts, key=lambda r: int(r["task"]))
        commit_keyed_parts(ws, CANDIDATES, [p for r in ordered for p in r["parts"]], CANDIDATES_SCHEMA,
                           "pair_id")
        ws.write_json(CANDIDATES_PLAN, {"rows_per_partition": self.rows_per_partition,
                                        "partitions": len(receipts)})
        return {key: sum(int(r[key]) for r in receipts) for key in ("candidates", "eval", "unlabeled")
                } | {"partitions": len(receipts)}


def label_counts(ws: Workspace) -> dict[str, int]:
    """Distinct pairs with a gold label, with a silver label and no gold one, and in `dropped`
    (any stage): the rest of flows.loop_state.pool_counts, counted by lazy scans."""
    def distinct(table: str, schema: pa.Schema) -> pl.LazyFrame:
        return ws.scan(table, schema=schema).select("pair_id").unique()

    gold = distinct("gold", LABELS_SCHEMA)
    silver = distinct("silver", LABELS_SCHEMA).join(gold, on="pair_id", how="anti")
    counts = pl.concat([frame.select(pl.len().alias("n")) for frame in
                        (gold, silver, distinct("dropped", DROPPED_SCHEMA))]).collect()["n"].to_list()
    return dict(zip(("gold", "silver", "dropped"), (int(n) for n in counts), strict=True))


def candidate_partitions(ws: Workspace) -> list[Partition]:
    """The pool partitions the candidates table was written by (a clear error when there is none,
    or when the pool changed since)."""
    from schemas.errors import InputError

    plan = ws.read_json(CANDIDATES_PLAN)
    if plan is None:
        raise InputError(f"{ws.uri} has no stage-2 candidates table yet: stage 2 selects it first")
    partitions = plan_partitions(ws, int(plan["rows_per_partition"]))
    if len(partitions) != int(plan["partitions"]):
        raise InputError(f"the pool of {ws.uri} changed after stage 2 selected its candidates "
                         f"({plan['partitions']} partitions then, {len(partitions)} now); "
                         "run it with --fresh")
    return partitions


def candidate_rows(ws: Workspace, partition: int, role: str | None = None) -> pl.DataFrame:
    """(pair_id, source, role) of one partition's rows of the candidates table, sorted by pair_id."""
    if not ws.has_table(CANDIDATES):
        return pl.DataFrame(schema=_IDS | {"source": pl.Utf8, "role": pl.Utf8})
    scan = ws.scan(CANDIDATES, schema=CANDIDATES_SCHEMA).filter(pl.col("partition") == partition)
    if role is not None:
        scan = scan.filter(pl.col("role") == role)
    return scan.select("pair_id", "source", "role").collect().unique("pair_id", keep="first").sort("pair_id")


def candidate_pool_rows(ws: Workspace, partition: Partition, role: str | None = None) -> pl.DataFrame:
    """The pool rows (every column) of one partition's candidates table rows, in pool order."""
    from schemas.pair import POOL_SCHEMA

    wanted = candidate_rows(ws, partition.index, role).select("pair_id")
    frames = [f.join(wanted, on="pair_id", how="semi", maintain_order="left")
              for f in read_partition(ws, partition, POOL_SCHEMA.names, _NONE)] if wanted.height else []
    if not frames:
        return pl.from_arrow(POOL_SCHEMA.empty_table())  # type: ignore[return-value]
    return pl.concat(frames).unique("pair_id", keep="first", maintain_order=True)


@dataclass(frozen=True)
class Route:
    """Filter A's routing: a candidate goes to the judges when the best RM's p <= threshold, and
    (with stage2.max_judged) when it is among the first max_judged such pairs by (p, pair_id):
    those with (p, pair_id) <= `cutoff`."""

    threshold: float
    cutoff: tuple[float, str] | None = None

    def to_judges(self, best: pl.DataFrame) -> pl.DataFrame:
        """The rows of `best` (pair_id, p) that go to the judges."""
        routed = best.filter(pl.col("p") <= self.threshold)
        if self.cutoff is None:
            return routed
        p, pair_id = self.cutoff
        return routed.filter((pl.col("p") < p) | ((pl.col("p") == p) & (pl.col("pair_id") <= pair_id)))


def candidate_scores(ws: Workspace, partition: int, round_: int, model: str) -> pl.DataFrame:
    """(pair_id, p) of one partition's candidates that `model` of `round_` scored, sorted by pair_id."""
    ids = candidate_rows(ws, partition, CANDIDATE)["pair_id"]
    return scored_among(ws, round_, model, ids)


def route_cutoff(ws: Workspace, partitions: list[int], round_: int, model: str, threshold: float,
                 max_judged: int) -> tuple[float, str] | None:
    """The (p, pair_id) of the max_judged-th pair filter A routes, over every partition (None when
    fewer are routed): a running bottom-k, so this holds at most 2 * max_judged rows."""
    if max_judged <= 0:
        return float("-inf"), ""  # nothing is routed
    kept = pl.DataFrame(schema={"pair_id": pl.Utf8, "p": pl.Float64})
    for index in partitions:
        routed = candidate_scores(ws, index, round_, model).filter(pl.col("p") <= threshold)
        kept = pl.concat([kept, routed]).sort(["p", "pair_id"]).head(max_judged)
    if kept.height < max_judged:
        return None
    last = kept.row(kept.height - 1, named=True)
    return float(last["p"]), str(last["pair_id"])


def judge_verdicts_among(ws: Workspace, judges: list[str], ids: pl.Series, round_: int,
                         partition: Partition | None = None) -> pl.DataFrame:
    """(pair_id, judge, verdict): each judge's self-consistent verdict on `ids` in `round_` (of
    the pool `partition`: only the judgments parts that may hold them are read)."""
    from pipeline.judges.aggregate import judge_verdicts

    empty = pl.DataFrame(schema={"pair_id": pl.Utf8, "judge": pl.Utf8, "verdict": pl.Utf8})
    judgments = _judgments(ws, judges, ids, round_, partition)
    if judgments.height == 0:
        return empty
    return judge_verdicts(judgments).select("pair_id", "judge", "verdict")


def _judgments(ws: Workspace, judges: list[str], ids: pl.Series, round_: int,
               partition: Partition | None = None) -> pl.DataFrame:
    if not judges or ids.is_empty() or not ws.has_table("judgments"):
        return pl.from_arrow(JUDGMENTS_SCHEMA.empty_table())  # type: ignore[return-value]
    return (scan_meeting(ws, "judgments", partition, JUDGMENTS_SCHEMA)
            .filter((pl.col("round") == round_) & pl.col("pair_id").is_in(ids)
                    & pl.col("judge").is_in(judges)).collect())


def vote_scores(verdicts: pl.DataFrame, weights: dict[str, float], ids: pl.Series) -> pl.DataFrame:
    """(pair_id, score, voters) for every pair of `ids`: the reliability-weighted vote."""
    from pipeline.trust import weighted_vote_score

    scored = weighted_vote_score(verdicts, weights) if verdicts.height else pl.DataFrame(
        schema={"pair_id": pl.Utf8, "score": pl.Float64, "voters": pl.Int64})
    frame = pl.DataFrame({"pair_id": ids}, schema=_IDS)
    return frame.join(scored, on="pair_id", how="left").with_columns(
        pl.col("score").fill_null(0.0).cast(pl.Float64), pl.col("voters").fill_null(0).cast(pl.Int64))


def vote_verdicts(scored: pl.DataFrame) -> pl.DataFrame:
    """(pair_id, verdict, score, voters): the weighted vote's sign as a verdict (tie at 0)."""
    return scored.with_columns(
        verdict=pl.when(pl.col("voters") == 0).then(pl.lit(None, dtype=pl.String))
        .when(pl.col("score") > 0).then(pl.lit("chosen"))
        .when(pl.col("score") < 0).then(pl.lit("rejected"))
        .otherwise(pl.lit("tie")))


def aggregated_votes(ws: Workspace, judges: list[str], ids: pl.Series, round_: int,
                     weights: dict[str, float], partition: Partition | None = None) -> pl.DataFrame:
    """Votes of the judges with weight > 0 on `ids`, aggregated within and across judges."""
    from pipeline.judges import aggregate_votes

    voting = [j for j in judges if weights.get(j, 0.0) > 0]
    return aggregate_votes(_judgments(ws, voting, ids, round_, partition), weights)


def checked_by(ws: Workspace, judges: dict[str, float], ids: pl.Series, round_: int,
               partition: Partition | None = None) -> int:
    """How many of `ids` have a verdict of the judges (`judges`: name -> configured weight)."""
    from pipeline.judges import aggregate_votes

    votes = aggregate_votes(_judgments(ws, list(judges), ids, round_, partition), judges)
    return int(votes["verdict"].is_not_null().sum())


@dataclass(frozen=True)
class DecideStage:
    """Filters A, B and flip-recycling over one partition's candidates, gated by `trust`."""

    round: int
    best_round: int
    best_model: str
    gold_model: str
    route: Route
    trust: Trust
    judges: tuple[str, ...]
    """Every judge of the stage (their verdicts are read; only weighted ones vote)."""
    weights: dict[str, float] = field(default_factory=dict)
    rules_checked_all: bool = False
    """Rule verifiers that earned a vote checked every candidate, not only the routed ones."""
    recycle: bool = True
    name: ClassVar[str] = "stage2-decisions"

    def run(self, ws: Workspace, partition: Partition) -> Receipt:
        """One partition's decisions as one uncommitted part of `decisions`; counts in the receipt."""
        timer = _Timed()
        candidates = candidate_rows(ws, partition.index, CANDIDATE)["pair_id"]
        best = scored_among(ws, self.best_round, self.best_model, candidates, partition)
        gold = scored_among(ws, self.round, self.gold_model, candidates, partition)
        routed = self.route.to_judges(best)["pair_id"]
        judged = candidates if self.rules_checked_all else routed
        verdicts = judge_verdicts_among(ws, list(self.judges), judged, self.round, partition)
        votes = vote_verdicts(vote_scores(verdicts, self.weights, judged))
        # A pair filter A kept and no rule could check has no vote.
        votes = votes.filter(pl.col("pair_id").is_in(routed) | (pl.col("voters") > 0))
        decisions = gated_stage2_decisions(best, gold, votes, self.round, self.trust, recycle=self.recycle,
                                           threshold=self.route.threshold)
        parts = [write_part(ws, "decisions", decisions_table(decisions))] if decisions.height else []
        final = final_decisions(decisions).group_by("decision").len()
        outcome = dict(zip(final["decision"].to_list(), final["len"].to_list(), strict=True))
        agreement = aggregated_votes(ws, list(self.judges), routed, self.round, self.weights,
                                     partition)["agreement"]
        return timer.receipt(self.name, partition.index, candidates.len(), parts,
                             relabeled=routed.len(), voted=int((votes["voters"] > 0).sum()),
                             outcome=outcome,
                             agreement_sum=float(agreement.sum()), agreement_n=agreement.len())

    def commit(self, ws: Workspace, receipts: list[Receipt]) -> dict[str, Any]:
        """Land every partition's decisions as one version of `decisions`; the summed counts."""
        ordered = sorted(receipts, key=lambda r: int(r["task"]))
        commit_keyed_parts(ws, "decisions", [p for r in ordered for p in r["parts"]], DECISIONS_SCHEMA,
                           ["pair_id", "filter", "round"])
        outcome: dict[str, int] = {}
        for r in ordered:
            for decision, n in r["outcome"].items():
                outcome[decision] = outcome.get(decision, 0) + int(n)
        agreed = sum(int(r["agreement_n"]) for r in ordered)
        return {"candidates": sum(int(r["examined"]) for r in ordered),
                "relabeled": sum(int(r["relabeled"]) for r in ordered),
                "voted": sum(int(r["voted"]) for r in ordered),
                "outcome": dict(sorted(outcome.items())),
                "agreement": sum(float(r["agreement_sum"]) for r in ordered) / agreed if agreed else None,
                "partitions": len(ordered)}


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [1e-6, 1 - 1e-6]."""
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def candidate_log_lr_counts(ws: Workspace, partitions: list[int], round_: int, model: str,
                            coef: float) -> pl.DataFrame:
    """(source, bin, n): how many candidates `model` scored sit at each calibrated log-likelihood
    ratio of pipeline.trust's grid, per source: what the pool's noise rate is estimated from
    (pipeline.trust.noise_by_source_counts).

    Partition after partition, each one's counts added to the running total: memory is one
    partition plus the grid, whatever the pool's size, and the total does not depend on the order."""
    from pipeline.trust import log_lr_counts, merge_counts

    total = merge_counts([])
    for index in partitions:
        rows = candidate_rows(ws, index, CANDIDATE)
        scored = scored_among(ws, round_, model, rows["pair_id"]).join(
            rows.select("pair_id", "source"), on="pair_id", how="left")
        counts = log_lr_counts(scored.select(
            "source", log_lr=pl.Series(logit(scored["p"].to_numpy()) * coef, dtype=pl.Float64)))
        total = merge_counts([total, counts])
    return total
