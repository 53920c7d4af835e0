"""Stage 1: small-scale, human in the loop, iterated (method.md).

Each round: verify a seed / priority batch (humans -> gold; pairs sent to Argilla carry the
judges' votes as suggestions) and split new gold into a train and an evaluation part, measure
every judge on evaluation gold, let the reliable judges label silver (a label changes only on
reliable, calibrated evidence), train a Bradley-Terry RM on silver, score the pool, measure the
RM on evaluation gold, retrieve the unlabeled pairs nearest to where the RM fails on train gold,
have the judges label them (humans the first few), and record the round.
A round whose rounds/N/summary.json exists is done and is skipped on a re-run; inside a round,
each finished step is skipped too (rounds/N/steps/).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.gold_parts import gold_part, update_gold_split
from flows.labeling import judge_configs, label_with_judges, verify_with_votes
from flows.loop_state import (
    completed_rounds,
    labels,
    round_dir,
    step,
    training_frame,
)
from flows.round_steps import RM_MODEL, choose_batches, retrieve_for_round, round_summary
from flows.runners import make_task_runner
from flows.scoring import score_partitions
from flows.stages import embed_flow
from flows.tasks import attributes_tasks, stats_dict, train_rm_task
from flows.trust import measure_judges, measure_rm
from pipeline.attributes_stage import AttributesStage, run_attributes
from pipeline.score_stage import ScoreStage
from pipeline.stage import ROWS_PER_PARTITION
from pipeline.store import Workspace
from schemas.config import AttributesConfig, SynprefConfig
from schemas.errors import InputError


@flow(name="stage1-round", log_prints=True)
def stage1_round(config: SynprefConfig, round_: int) -> dict[str, Any]:
    ws = Workspace(config.workspace)
    loop, folder = config.loop, round_dir(round_)
    seed = loop.seed + round_
    done: dict[str, dict[str, Any]] = {}

    # The seed / priority batch: objective, low-controversy pairs first, across sources.
    batch = step(ws, folder, "batch", lambda: choose_batches(ws, config, round_))
    # Humans verify it (or the source's own human labels stand in): gold. Pairs sent to Argilla
    # are voted on first, so annotators see the judges' suggestions (no gold RM exists yet, so
    # workspace-RM judges without a model of their own sit this vote out).
    done["human"] = step(ws, folder, "human", lambda: verify_with_votes(
        ws, config, judge_configs(config, None), batch["human"], round_, seed))
    # New gold is split once: a train part that may teach and guide, an eval part that only measures.
    done["gold-split"] = step(ws, folder, "gold-split", lambda: update_gold_split(ws, config, round_))
    gold_train = gold_part(ws, "train")

    # The gold RM, trained on the train part of the human labels only: rm-workspace judges use it.
    gold_rm_dir = f"{folder}/gold-rm" if gold_train.height else None
    done["gold-rm"] = step(ws, folder, "gold-rm", lambda: train_rm_task(
        ws.uri, config.rm, gold_train, None, gold_rm_dir) if gold_rm_dir else {"skipped": "no gold labels"})
    judges = judge_configs(config, gold_rm_dir)

    # Each judge's accuracy on evaluation gold sets its vote weight (none if its CI includes 0.5).
    done["reliability"] = step(ws, folder, "reliability", lambda: measure_judges(
        ws, config, judges, round_, seed))

    # LLM-verified pairs form silver, the RM's training data; a label changes only on reliable votes.
    done["silver"] = step(ws, folder, "silver", lambda: label_with_judges(
        ws, judges, config, done["reliability"], batch["silver"], round_, seed))
    silver = training_frame(labels(ws, "silver"))
    if silver.height == 0 and not judges:
        raise InputError(f"round {round_}: no judges are configured, so nothing labels silver for the RM "
                         "to train on; add [[judges]] entries to the config")
    if silver.height == 0:
        raise InputError(f"round {round_}: the judges decided no pair of the silver batch, so there is "
                         "nothing to train the RM on; check the judges section of the config")

    # Step 1: a Bradley-Terry RM on silver. Its checkpoint is not chosen on gold: the train part
    # taught its teacher, and the eval part must stay unseen to measure it.
    done["rm"] = step(ws, folder, "rm", lambda: train_rm_task(
        ws.uri, config.rm, silver, None, f"{folder}/rm"))
    done["score"] = step(ws, folder, "score", lambda: score_partitions(
        ws, ScoreStage(f"{folder}/rm", round_, RM_MODEL),
        rows_per_partition=loop.shard_rows, max_parallel=loop.max_parallel_shards))
    done["rm-eval"] = step(ws, folder, "rm-eval", lambda: measure_rm(ws, round_, RM_MODEL))

    # Step 2: error-driven adaptive retrieval around the train part of gold.
    done["retrieve"] = step(ws, folder, "retrieve", lambda: retrieve_for_round(ws, config, round_))
    retrieved = done["retrieve"]["pair_ids"]
    to_humans = retrieved[: loop.human_per_round]
    if to_humans:
        done["human-retrieved"] = step(ws, folder, "human-retrieved", lambda: verify_with_votes(
            ws, config, judges, to_humans, round_, seed))
        done["gold-split-retrieved"] = step(ws, folder, "gold-split-retrieved",
                                            lambda: update_gold_split(ws, config, round_))

    # Step 3: the judges label the retrieved pairs; their labels join silver.
    done["judge"] = step(ws, folder, "judge", lambda: label_with_judges(
        ws, judges, config, done["reliability"], retrieved[len(to_humans):], round_, seed))

    summary = round_summary(ws, config, round_, done)
    ws.write_json(f"{folder}/summary.json", summary)
    get_run_logger().info("round %d: gold-eval accuracy %s, %s", round_, summary["gold_eval"]["accuracy"],
                          summary["counts"])
    for warning in summary["trust"]["warnings"]:
        get_run_logger().warning("round %d: %s", round_, warning)
    return summary


@flow(name="attributes")
def attributes_flow(ws_uri: str, cfg: AttributesConfig,
                    rows_per_partition: int = ROWS_PER_PARTITION) -> dict[str, Any]:
    """The active pool's missing attributes by partition tasks on the flow's task runner, one
    commit per table; progress goes to the step the calling flow is in (`step_progress`)."""
    from flows.progress import step_progress

    stats = run_attributes(Workspace(ws_uri), AttributesStage(cfg), run=attributes_tasks(ws_uri),
                           rows_per_partition=rows_per_partition, progress=step_progress("pairs"))
    return stats_dict(stats)


def _stage1_run_name() -> str:
    from flows.artifacts import run_name

    return run_name("stage1")


@flow(name="stage1", flow_run_name=_stage1_run_name)
def stage1_flow(config: SynprefConfig, runner: str = "local", runner_address: str | None = None,
                config_name: str | None = None) -> list[dict[str, Any]]:
    """Attributes and retrieval embeddings for the pool (partition tasks on `runner`), then the
    rounds not yet completed.

    Each round's shard tasks run on `runner` (local threads, Dask or Ray); after each round the
    run page gets its artifacts (flows.artifacts) and listeners a progress event.
    """
    from flows.artifacts import publish_round
    from flows.progress import progress, within

    ws = Workspace(config.workspace)
    # Every pair gets its 5-tuple; without a configured generator the heuristic one (no model).
    attributes = config.attributes if config.attributes.enabled else config.attributes.model_copy(
        update={"kind": "heuristic"})
    progress("stage1", None, "attributes", 0, None)
    with within("stage1", None, "attributes"):
        attributes_flow.with_options(task_runner=make_task_runner(runner, address=runner_address))(
            ws.uri, attributes)
    progress("stage1", None, "attributes", 1, 1)
    progress("stage1", None, "embed", 0, None)
    with within("stage1", None, "embed"):
        embed_flow.with_options(task_runner=make_task_runner(runner, address=runner_address))(
            ws.uri, config.embed, "conversation+attributes")
    progress("stage1", None, "embed", 1, 1)
    finished = set(completed_rounds(ws))
    summaries = []
    for round_ in range(1, config.loop.iterations + 1):
        if round_ in finished:
            summaries.append(ws.read_json(f"{round_dir(round_)}/summary.json"))
            progress("stage1", round_, "round", 1, 1, note="done before")
            continue
        progress("stage1", round_, "round", 0, None)
        task_runner = make_task_runner(runner, address=runner_address)
        summaries.append(stage1_round.with_options(task_runner=task_runner)(config, round_))
        publish_round(ws, summaries[-1])
        progress("stage1", round_, "round", 1, 1)
    return summaries
