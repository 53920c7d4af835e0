"""Who labels a batch: humans (Argilla, or a source's own human labels) into gold, judges into silver."""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from flows.loop_state import active_ids, add_labels, label_rows
from flows.tasks import judge_task
from pipeline.store import Workspace
from schemas.config import EmbedConfig, JudgeConfig, SynprefConfig
from schemas.labels import JUDGMENTS_SCHEMA


def gold_eligible(ws: Workspace, config: SynprefConfig) -> pl.DataFrame:
    """Active pairs whose own label may count as gold (gold_from = "source-labels").

    A source's label counts only where humans made it (label_source = human), and only for the
    sources listed in `loop.gold_sources` when that list is set.
    """
    frame = active_ids(ws).filter(pl.col("label_source") == "human")
    if config.loop.gold_sources:
        frame = frame.filter(pl.col("source").is_in(config.loop.gold_sources))
    return frame


def verify_batch(ws: Workspace, config: SynprefConfig, pair_ids: list[str], round_: int) -> dict[str, Any]:
    """Human verification of a batch; the verdicts join gold."""
    if not pair_ids:
        return {"sent": 0, "gold_added": 0, "discarded": 0, "mode": config.loop.gold_from}
    if config.loop.gold_from == "source-labels":
        eligible = set(gold_eligible(ws, config)["pair_id"].to_list())
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
        voted = votes_summary(judge_votes(ws, judges, config.embed, pair_ids, round_, seed))
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
    ws: Workspace, judges: list[JudgeConfig], embed: EmbedConfig, pair_ids: list[str], round_: int, seed: int
) -> dict[str, Any]:
    """Judge a batch, vote within and across judges, and add the outcome to silver."""
    if not pair_ids or not judges:
        return {"judged": 0, "silver_added": 0, "agreement": None, "position_inconsistent": None,
                "verdicts": {}}
    votes = judge_votes(ws, judges, embed, pair_ids, round_, seed)
    detail = [
        json.dumps({"agreement": a, "position_inconsistent": bool(pi)}, sort_keys=True)
        for a, pi in zip(votes["agreement"].to_list(), votes["position_inconsistent"].to_list(),
                         strict=True)
    ]
    added = add_labels(ws, "silver", label_rows(votes["pair_id"].to_list(), votes["verdict"].to_list(),
                                                "judges", round_, detail))
    return votes_summary(votes) | {
        "silver_added": added,
        "position_inconsistent": float(votes["position_inconsistent"].cast(pl.Float64).mean())  # type: ignore[arg-type]
        if votes.height else None,
    }


def judge_votes(ws: Workspace, judges: list[JudgeConfig], embed: EmbedConfig, pair_ids: list[str],
                round_: int, seed: int) -> pl.DataFrame:
    """Judge a batch and return the aggregated (pair_id, verdict, agreement, ...) without labeling."""
    if pair_ids and judges:
        judge_task(ws.uri, judges, embed, pair_ids, round_, seed)
    return read_votes(ws, judges, pair_ids, round_)


def read_votes(ws: Workspace, judges: list[JudgeConfig], pair_ids: list[str], round_: int) -> pl.DataFrame:
    """Votes already in the judgments table, aggregated within and then across judges."""
    from pipeline.judges import aggregate_votes

    if not pair_ids or not judges:
        return pl.DataFrame(schema={"pair_id": pl.String, "verdict": pl.String, "agreement": pl.Float64,
                                    "position_inconsistent": pl.Boolean})
    judgments = pl.from_arrow(ws.read("judgments", schema=JUDGMENTS_SCHEMA)).filter(  # type: ignore[union-attr]
        (pl.col("round") == round_) & pl.col("pair_id").is_in(pair_ids)
        & pl.col("judge").is_in([j.name for j in judges])
    )
    return aggregate_votes(judgments, {j.name: j.weight for j in judges}).sort("pair_id")
