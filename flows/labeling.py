"""Who labels a batch: humans (Argilla, or a source's own human labels) into gold, judges into silver."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from flows.judging import MAX_PARALLEL, SHARD_ROWS, judge_in_shards
from flows.loop_state import active_ids, add_labels, label_rows
from pipeline.gates import Trust
from pipeline.store import Workspace
from schemas.config import EmbedConfig, JudgeConfig, SynprefConfig
from schemas.labels import JUDGMENTS_SCHEMA


def gold_eligible(ws: Workspace, config: SynprefConfig, pair_ids: list[str]) -> pl.DataFrame:
    """Those of `pair_ids` whose own label may count as gold (gold_from = "source-labels"):
    active pairs (filtered as the pool is scanned).

    A source's label counts only where humans made it (label_source = human), and only for the
    sources listed in `loop.gold_sources` when that list is set.
    """
    frame = active_ids(ws, pl.Series("pair_id", pair_ids, pl.String))
    frame = frame.filter(pl.col("label_source") == "human")
    if config.loop.gold_sources:
        frame = frame.filter(pl.col("source").is_in(config.loop.gold_sources))
    return frame


def verify_batch(ws: Workspace, config: SynprefConfig, pair_ids: list[str], round_: int) -> dict[str, Any]:
    """Human verification of a batch; the verdicts join gold."""
    if not pair_ids:
        return {"sent": 0, "gold_added": 0, "discarded": 0, "mode": config.loop.gold_from}
    if config.loop.gold_from == "source-labels":
        eligible = set(gold_eligible(ws, config, pair_ids)["pair_id"].to_list())
        ids = [p for p in pair_ids if p in eligible]
        added = add_labels(ws, "gold", label_rows(ids, ["chosen"] * len(ids), "source", round_,
                                                  ["source's own human label"] * len(ids)))
        return {"sent": len(pair_ids), "gold_added": added, "discarded": 0, "mode": "source-labels"}
    if config.loop.gold_from == "argilla":
        from flows.argilla_step import verify_in_argilla

        return verify_in_argilla(ws, config, pair_ids, round_)
    raise ValueError(f"loop.gold_from: unknown value {config.loop.gold_from!r} "
                     "(use source-labels or argilla)")


def verify_with_votes(ws: Workspace, config: SynprefConfig, judges: list[JudgeConfig], pair_ids: list[str],
                      round_: int, seed: int) -> dict[str, Any]:
    """Human verification of a batch, with the judges voting first when it goes to Argilla.

    The pushed records carry the judges' votes as suggestions (docs/loop.md), so the votes must
    be in `judgments` before the push. They are judgments only: the pairs wait for the humans'
    verdict and never join silver.
    """
    voted = None
    if config.loop.gold_from == "argilla" and pair_ids and judges:
        voted = votes_summary(judge_votes(ws, judges, config.embed, pair_ids, round_, seed,
                                          shard_rows=config.loop.shard_rows,
                                          max_parallel=config.loop.max_parallel_shards))
    return verify_batch(ws, config, pair_ids, round_) | {"judge_votes": voted}


def votes_summary(votes: pl.DataFrame) -> dict[str, Any]:
    """How many pairs the judges decided, their mean agreement and the verdict counts."""
    counts = votes.group_by("verdict").len().sort("verdict")
    return {
        "judged": votes.height,
        "agreement": float(votes["agreement"].mean()) if votes.height else None,  # type: ignore[arg-type]
        "verdicts": dict(zip(counts["verdict"].to_list(), counts["len"].to_list(), strict=True)),
    }


def judge_configs(config: SynprefConfig, gold_rm_dir: str | None) -> list[JudgeConfig]:
    """The configured judges, with workspace-RM judges pointed at the current gold RM.

    A `rm-workspace` judge with no model of its own judges with the gold RM of the round; with
    no gold RM yet (no human labels) it sits the round out.
    """
    judges = []
    for judge in config.judges:
        if judge.kind == "rm-workspace" and not judge.model:
            if gold_rm_dir is None:
                continue
            judge = judge.model_copy(update={"model": gold_rm_dir})
        judges.append(judge)
    return judges


def label_with_judges(
    ws: Workspace, judges: list[JudgeConfig], config: SynprefConfig, measured: dict[str, Any],
    pair_ids: list[str], round_: int, seed: int,
) -> dict[str, Any]:
    """Judge a batch, weigh the votes by measured reliability, gate, and add the outcome to silver.

    `measured` is the round's judge reliability (flows.trust.measure_judges). A pair's stored
    label is flipped only when the judges' vote is reliable on evaluation gold and the calibrated
    probability that the label is wrong is above stage2.flip_confidence; otherwise it joins
    silver with its stored label and the reason (`detail`) says why.
    """
    from flows.trust import per_judge_verdicts, vote_scores
    from pipeline.gates import flip_precision, gate_silver

    if not pair_ids or not judges:
        return {"judged": 0, "silver_added": 0, "agreement": None, "position_inconsistent": None,
                "verdicts": {}, "gate": {}}
    sharded = judge_in_shards(ws, judges, config.embed, pair_ids, round_, seed,
                              shard_rows=config.loop.shard_rows, max_parallel=config.loop.max_parallel_shards)
    weights = {name: rel["weight"] for name, rel in measured["judges"].items()}
    # Agreement is among the judges that earned a vote; with none, there is no agreement to report.
    votes = read_votes(ws, judges, pair_ids, round_, weights)
    verdicts = per_judge_verdicts(ws, [j.name for j in judges], pair_ids, round_)
    scored = vote_scores(verdicts, weights, pair_ids)
    trust = silver_trust(config, measured, scored)
    gated = gate_silver(scored, trust)
    added = add_labels(ws, "silver", label_rows(gated["pair_id"].to_list(), gated["verdict"].to_list(),
                                                "judges", round_, gated["detail"].to_list()))
    actions = gated.group_by("action").len()
    eval_log_lr = np.asarray(measured["ensemble"]["eval_score"]) * trust.coef.get("judges", 0.0)
    precision = (flip_precision(eval_log_lr, trust.prior_wrong, config.stage2.flip_confidence)
                 if trust.reliable("judges") and trust.prior_wrong is not None else None)
    return votes_summary(votes) | {
        "judged": scored.height,
        "voted": votes.height,
        "silver_added": added,
        "position_inconsistent": float(votes["position_inconsistent"].cast(pl.Float64).mean())  # type: ignore[arg-type]
        if votes.height else None,
        "voters_mean": float(scored["voters"].mean()) if scored.height else 0.0,  # type: ignore[arg-type]
        "shards": sharded,
        "gate": {
            "actions": dict(zip(actions["action"].to_list(), actions["len"].to_list(), strict=True)),
            "judges_reliable": trust.reliable("judges"),
            "prior_wrong": trust.prior_wrong,
            "expected_flip_precision": precision,
            "why": None if trust.reliable("judges") else trust.unreliable_reasons(),
        },
    }


def silver_trust(config: SynprefConfig, measured: dict[str, Any], scored: pl.DataFrame) -> Trust:
    """The silver gate's inputs: the vote's reliability and calibration, and the batch's noise
    rate estimated from the calibrated vote (None when the vote is not reliable)."""
    from flows.trust import judges_text, reliable
    from pipeline.gates import Evidence
    from pipeline.trust import estimate_noise_rate

    minimum = config.stage2.min_reliability
    is_reliable = reliable(measured, minimum)
    coef = float(measured["ensemble"]["calibration"]["coef"])
    prior = None
    if is_reliable and scored.height:
        prior = estimate_noise_rate(scored["score"].to_numpy() * coef).value
    name = "judges' vote" if is_reliable else f"judges' vote (per judge: {judges_text(measured)})"
    evidence = {"judges": Evidence(name, measured["ensemble"]["accuracy"], is_reliable)}
    return Trust(evidence, {"judges": coef}, prior, minimum, config.stage2.flip_confidence)


def judge_votes(ws: Workspace, judges: list[JudgeConfig], embed: EmbedConfig, pair_ids: list[str],
                round_: int, seed: int, *, shard_rows: int = SHARD_ROWS,
                max_parallel: int = MAX_PARALLEL) -> pl.DataFrame:
    """Judge a batch (in shard tasks on the flow's runner) and return the aggregated
    (pair_id, verdict, agreement, ...) without labeling."""
    judge_in_shards(ws, judges, embed, pair_ids, round_, seed, shard_rows=shard_rows,
                    max_parallel=max_parallel)
    return read_votes(ws, judges, pair_ids, round_)


def read_votes(ws: Workspace, judges: list[JudgeConfig], pair_ids: list[str], round_: int,
               weights: dict[str, float] | None = None) -> pl.DataFrame:
    """Votes already in the judgments table, aggregated within and then across judges.

    `weights`: the judges' measured vote weights (default: the configured ones); judges with
    weight 0 do not vote."""
    from pipeline.judges import aggregate_votes

    if not pair_ids or not judges:
        return pl.DataFrame(schema={"pair_id": pl.String, "verdict": pl.String, "agreement": pl.Float64,
                                    "position_inconsistent": pl.Boolean})
    names = [j.name for j in judges if weights is None or weights.get(j.name, 0) > 0]
    judgments = stored_judgments(ws, pair_ids, round_, names)
    return aggregate_votes(judgments, weights or {j.name: j.weight for j in judges}).sort("pair_id")


def stored_judgments(ws: Workspace, pair_ids: list[str], round_: int, judges: list[str]) -> pl.DataFrame:
    """This round's judgments of `pair_ids` by `judges`, filtered as the table is scanned: the
    judgments table grows with every round and judge, and is never read whole for a batch."""
    ids = pl.Series("pair_id", pair_ids, pl.String)
    return ws.scan("judgments", schema=JUDGMENTS_SCHEMA).filter(
        (pl.col("round") == round_) & pl.col("judge").is_in(judges) & pl.col("pair_id").is_in(ids.implode())
    ).collect()
