"""The curation-quality meter: run the configured loop on a pool with known label errors and
measure what each stage and filter catches.

`run_quality_meter` copies a selection of any workspace's pool, flips a known share of labels
(and optionally biases some toward the longer response), keeps a gold seed untouched, runs
stage 1 and stage 2 exactly as configured on the copy, and scores every filter against the
recorded flips. `run_world_experiment` does the same on the known-truth synthetic world and
adds reward-model accuracy on the world's clean held-out set for four training sets: the raw
noisy pool, synpref's curated subset, a random subset of the same size, and the noise-free pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from pipeline.quality.meter import FILTERS, detection_report, injected, noisy_copy, truth_labels
from pipeline.quality.metrics import aggregate_seeds, bootstrap_ci, mean_interval
from pipeline.quality.noise import NoiseConfig, seed_batch
from pipeline.quality.world import WorldConfig, generate_world
from pipeline.store import Workspace
from schemas.config import JudgeConfig, SynprefConfig
from schemas.errors import InputError
from schemas.pair import POOL_SCHEMA

REPORT_FILE = "quality/report.json"
CONDITIONS = ("raw noisy pool", "curated subset", "curated, kept labels only", "random subset",
              "noise-free pool")
"""RM training sets of the world experiment. `curated subset` is what the loop exports (gold,
silver and stage-2 keeps, with relabeled and recycled pairs flipped); `curated, kept labels
only` drops every pair the loop relabeled; `random subset` is as large as the curated one."""
COMBINED = "filter B (stage 2 combined)"
Progress = Callable[[str], None]


def embedded_default_config(pairs: int) -> SynprefConfig:
    """The embedded default's loop (gold-RM, cross-fitted pool-RM and rule judges, embedding-head
    RMs, 2 rounds), with stage 1 kept to a tenth of the pool per step so that stage 2 has a pool
    to filter."""
    config = SynprefConfig(judges=[JudgeConfig(name="gold-rm", kind="rm-workspace"),
                                   JudgeConfig(name="pool-rm", kind="rm-crossfit"),
                                   JudgeConfig(name="rules", kind="rule")])
    step = max(10, pairs // 10)
    loop = config.loop.model_copy(update={"silver_seed_size": step, "retrieve_max": step})
    return config.model_copy(update={"loop": loop})


def meter_config(config: SynprefConfig, workspace: str, seed_size: int) -> SynprefConfig:
    """The user's loop pointed at the noised copy: its gold is the untouched seed (source labels)."""
    loop = config.loop.model_copy(update={"gold_from": "source-labels", "gold_sources": [],
                                          "seed_size": seed_size, "human_per_round": 0})
    return config.model_copy(update={"workspace": workspace, "loop": loop, "sources": [],
                                     "argilla": config.argilla.model_copy(update={"enabled": False})})


def run_quality_meter(config: SynprefConfig, source: str, out: str, *, flip_share: float = 0.1,
                      length_bias: float = 0.0, seed: int = 0, pairs: int | None = None,
                      seed_size: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Noise a copy of `source`'s active pool into `out`, run the loop on it, report per filter."""
    from pipeline.pool import active_pool

    src = Workspace(source)
    if not src.has_table("pool"):
        raise InputError(f"{source} has no pool table; ingest a source first")
    pool = active_pool(src).collect().unique("pair_id", keep="first").sort("pair_id")
    ids = pool["pair_id"].to_list()
    if pairs is not None:
        pool = pool.filter(pl.col("pair_id").is_in(seed_batch(ids, pairs, seed)))
    n_seed = min(seed_size if seed_size is not None else config.loop.seed_size, pool.height // 2)
    gold_ids = seed_batch(pool["pair_id"].to_list(), n_seed, seed + 1)
    table = pool.select(POOL_SCHEMA.names).to_arrow().cast(POOL_SCHEMA)
    noisy_copy(table, Workspace(out), NoiseConfig(flip_share, length_bias, seed), gold_ids=gold_ids,
               meta={"source": source})
    return run_loop_and_measure(config, out, len(gold_ids), progress=progress)


def run_loop_and_measure(config: SynprefConfig, out: str, seed_size: int,
                         progress: Progress | None = None) -> dict[str, Any]:
    """Stage 1 and stage 2 of `config` on the noised copy `out`, then the detection report.

    Both flows skip what the copy already records, so an interrupted meter resumes.
    """
    from flows.stage1 import stage1_flow
    from flows.stage2 import GOLD_RM_MODEL, stage2_flow

    ws = Workspace(out)
    cfg = meter_config(config, out, seed_size)
    _say(progress, f"stage 1 ({cfg.loop.iterations} rounds) on {out}")
    rounds = stage1_flow(cfg)
    stage2 = None
    if cfg.stage2.enabled:
        _say(progress, "stage 2")
        stage2 = stage2_flow(cfg)
    report = detection_report(ws, stage2_round=stage2["round"] if stage2 else None,
                              gold_rm_model=GOLD_RM_MODEL, threshold=cfg.stage2.threshold)
    report["settings"] = ws.read_json("quality/settings.json")
    report["rounds"] = [{"round": r["round"], "gold_accuracy": r.get("gold_accuracy"),
                         "counts": r.get("counts")} for r in rounds]
    report["stage2"] = {k: stage2[k] for k in ("best_round", "candidates", "relabeled", "outcome")} \
        if stage2 else None
    report["trust"] = {"rounds": [r.get("trust") for r in rounds],
                       "stage2": stage2.get("trust") if stage2 else None}
    ws.write_json(REPORT_FILE, report)
    return report


def world_seed_run(config: SynprefConfig, world: WorldConfig, out: str,
                   progress: Progress | None = None) -> dict[str, Any]:
    """One seed of the world experiment: noise, loop, detection, and held-out RM accuracy.

    A finished seed is reused; one that lacks a training condition trains only that one.
    """
    from flows.loop_state import labels, training_frame
    from pipeline.quality.heldout import heldout_correct

    ws = Workspace(out)
    generated = generate_world(world)
    report = ws.read_json("quality/world.json")
    if report is None:
        gold_ids = [r.pair_id for r in generated.pool if r.label_source == "human"]
        noisy_copy(generated.pool_table(), ws, NoiseConfig(world.flip_share, world.length_bias, world.seed),
                   gold_ids=gold_ids, meta={"world": world.model_dump()})
        report = run_loop_and_measure(config, out, len(gold_ids), progress=progress)
        report.update(heldout={}, heldout_correct={}, train_pairs={})
    conditions = {name: frame for name, frame in training_sets(ws, world.seed).items()
                  if name not in report["heldout_correct"]}
    if not conditions:
        return report
    _say(progress, f"training {len(conditions)} reward models for the held-out comparison")
    gold = training_frame(labels(ws, "gold"))
    correct = heldout_correct(ws, config.rm, conditions, gold, generated.heldout)
    for name, c in correct.items():
        report["heldout"][name] = bootstrap_ci(c, seed=world.seed).as_dict()
        report["heldout_correct"][name] = c.tolist()
        report["train_pairs"][name] = conditions[name].height
    ws.write_json("quality/world.json", report)
    return report


def training_sets(ws: Workspace, seed: int) -> dict[str, pl.DataFrame]:
    """(pair_id, verdict) per condition, all over the noised copy's pool (see CONDITIONS)."""
    from flows.loop_state import decisions, labels
    from pipeline.consistency import curated_selection
    from pipeline.quality.heldout import random_subset

    all_ids = injected(ws)["pair_id"].sort()
    raw = pl.DataFrame({"pair_id": all_ids, "verdict": ["chosen"] * len(all_ids)})
    selection = curated_selection(labels(ws, "gold"), labels(ws, "silver"), decisions(ws))
    curated = selection.select("pair_id", verdict=pl.when(pl.col("flipped")).then(pl.lit("rejected"))
                               .otherwise(pl.lit("chosen")))
    kept = selection.filter(~pl.col("flipped")).select("pair_id", verdict=pl.lit("chosen"))
    return {
        "raw noisy pool": raw,
        "curated subset": curated,
        "curated, kept labels only": kept,
        "random subset": random_subset(raw, curated.height, seed),
        "noise-free pool": truth_labels(ws),
    }


def aggregate_filters(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per filter, the mean and interval over seeds of precision, recall, F1 and clean discards."""
    filters: dict[str, dict[str, Any]] = {}
    for name in [f for f in FILTERS if f in runs[0]["filters"]]:
        present = [r["filters"][name] for r in runs if name in r["filters"]]
        filters[name] = {metric: mean_interval([p[metric] for p in present]).as_dict()
                         for metric in ("precision", "recall", "f1", "clean_discard_rate")}
        filters[name]["pairs"] = float(np.mean([p["pairs"] for p in present]))
    return filters


def run_world_experiment(config: SynprefConfig, world: WorldConfig, seeds: Sequence[int], out: str,
                         progress: Progress | None = None) -> dict[str, Any]:
    """The world experiment over several seeds, aggregated with bootstrap intervals, and the
    targets checked: curated within 1 point of noise-free, raw at least 5 points below it, and
    F1 >= 0.85 for the combined stage-2 filters."""
    runs = []
    for seed in seeds:
        _say(progress, f"world seed {seed}")
        runs.append(world_seed_run(config, world.model_copy(update={"seed": seed}),
                                   f"{out.rstrip('/')}/seed-{seed}", progress))
    heldout = {name: aggregate_seeds([np.asarray(r["heldout_correct"][name]) for r in runs]).as_dict()
               for name in CONDITIONS}
    filters = aggregate_filters(runs)
    noise_free = heldout["noise-free pool"]["mean"]
    combined = filters.get(COMBINED, {}).get("f1", {}).get("mean")
    targets = {
        "curated within 1 point of noise-free": heldout["curated subset"]["mean"] >= noise_free - 0.01,
        "raw at least 5 points below noise-free": heldout["raw noisy pool"]["mean"] <= noise_free - 0.05,
        "combined stage-2 F1 >= 0.85": combined is not None and combined >= 0.85,
    }
    summary = {
        "world": world.model_dump(exclude={"seed"}),
        "seeds": list(seeds),
        "heldout_accuracy": heldout,
        "filters": filters,
        "curated_error_rate": mean_interval([r["curated"]["error_rate"] for r in runs]).as_dict(),
        "train_pairs": {n: float(np.mean([r["train_pairs"][n] for r in runs])) for n in CONDITIONS},
        "targets": targets,
        "per_seed": [{k: v for k, v in r.items() if k != "heldout_correct"} for r in runs],
    }
    Workspace(out).write_json("world-report.json", summary)
    return summary


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
