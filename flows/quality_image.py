"""The known-truth image world through the loop: `synpref bench world --modality image`.

Per seed: generate the image world (pipeline.quality.world_image), store its images, write a
noised copy of its pool with a gold seed (flips recorded in `quality/injected`), run the
configured loop and score every filter against the injected flips, as the text world does.
Seeds are averaged with intervals; the target is filter B's F1 >= 0.85. What the loop catches
depends on judges that see the image: with text-only judges and RMs (the embedded default) the
right answer is not in what they read, and the figures say so.

A share of the world's questions ships a reference answer, which the loop's rule verifiers can
check once they earn a vote on evaluation gold. Filter B and the whole loop are therefore also
reported split into verifiable and non-verifiable pairs, with a bootstrap interval over pairs
(stratified by seed), so the verifier's figure is never read as image understanding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from flows.quality import COMBINED, REPORT_FILE, aggregate_filters, run_loop_and_measure
from pipeline.quality.meter import injected, noisy_copy
from pipeline.quality.metrics import Interval, mean_interval
from pipeline.quality.noise import NoiseConfig
from pipeline.quality.world_image import ImageWorldConfig, generate_image_world, verifiable_pair_ids
from pipeline.store import Workspace
from schemas.config import SynprefConfig

Progress = Callable[[str], None]
SUMMARY_FILE = "world-image-report.json"
WHOLE_LOOP = "whole loop"
STAGE2_JUDGES = "stage2 judges"
SPLITS = ("verifiable", "non-verifiable")
TARGET_F1 = 0.85


def image_world_seed_run(config: SynprefConfig, world: ImageWorldConfig, out: str, *, flip_share: float,
                         progress: Progress | None = None) -> dict[str, Any]:
    """One seed: images stored, pool noised, loop run, detection report (a finished seed is reused)."""
    ws = Workspace(out)
    report = ws.read_json(REPORT_FILE)
    if report is not None:
        return report
    generated = generate_image_world(world)
    generated.store(ws)
    gold = [r.pair_id for r in generated.pool if r.label_source.value == "human"]
    noisy_copy(generated.pool_table(), ws, NoiseConfig(flip_share, 0.0, world.seed), gold_ids=gold,
               meta={"world": world.model_dump(), "modality": "image"})
    return run_loop_and_measure(config, out, len(gold), progress=progress)


def run_image_world_experiment(config: SynprefConfig, world: ImageWorldConfig, seeds: Sequence[int],
                               out: str, *, flip_share: float = 0.25,
                               progress: Progress | None = None) -> dict[str, Any]:
    """The image world over several seeds: per-filter precision / recall / F1 with intervals."""
    runs = []
    for seed in seeds:
        if progress is not None:
            progress(f"image world seed {seed}")
        runs.append(image_world_seed_run(config, world.model_copy(update={"seed": seed}),
                                         f"{out.rstrip('/')}/seed-{seed}", flip_share=flip_share,
                                         progress=progress))
    filters = aggregate_filters(runs)
    combined = filters.get(COMBINED, {}).get("f1", {}).get("mean")
    outcomes = [pair_outcomes(Workspace(f"{out.rstrip('/')}/seed-{seed}")) for seed in seeds]
    splits = split_detection(outcomes)
    targets = {"combined stage-2 F1 >= 0.85": combined is not None and combined >= TARGET_F1}
    for split in SPLITS:
        f1 = splits[split][COMBINED]["f1"]["mean"] if splits[split][COMBINED]["pairs"] else None
        targets[f"combined stage-2 F1 >= 0.85 ({split} pairs)"] = f1 is not None and f1 >= TARGET_F1
    # The split rows sit beside the per-filter rows, so every table and plot of the report shows them.
    for split in SPLITS:
        for name in (STAGE2_JUDGES, COMBINED, WHOLE_LOOP):
            filters[f"{name}, {split}"] = splits[split][name]
    summary = {
        "modality": "image",
        "world": world.model_dump(exclude={"seed"}),
        "flip_share": flip_share,
        "seeds": list(seeds),
        "pairs": float(np.mean([r["pairs"] for r in runs])),
        "flipped": float(np.mean([r["flipped"] for r in runs])),
        "filters": filters,
        "curated_error_rate": mean_interval([r["curated"]["error_rate"] for r in runs]).as_dict(),
        "splits": splits,
        "targets": targets,
        "per_seed": runs,
    }
    Workspace(out).write_json(SUMMARY_FILE, summary)
    return summary


def pair_outcomes(ws: Workspace) -> pl.DataFrame:
    """One row per non-gold pair the loop looked at: whether it was flipped, flagged by filter B,
    flagged by the whole loop, seen by filter B, and whether it ships a reference answer."""
    truth = injected(ws).filter(~pl.col("protected")).select("pair_id", "flipped")
    verifiable = verifiable_pair_ids(ws)
    decisions = pl.from_arrow(ws.read("decisions")) if ws.has_table("decisions") else pl.DataFrame(
        schema={"pair_id": pl.String, "filter": pl.String, "decision": pl.String, "round": pl.Int64})
    b = decisions.filter(pl.col("filter") == "B")
    if b.height:
        b = b.filter(pl.col("round") == b["round"].max())
    silver = pl.from_arrow(ws.read("silver")) if ws.has_table("silver") else pl.DataFrame(
        schema={"pair_id": pl.String, "verdict": pl.String})
    routed = decisions.filter((pl.col("filter") == "A") & (pl.col("decision") == "relabel"))
    if routed.height:
        routed = routed.filter(pl.col("round") == routed["round"].max())
    votes = _votes(ws, int(routed["round"].max()) if routed.height else -1, set(routed["pair_id"]))
    j_seen, j_flag = set(votes["pair_id"]), set(votes.filter(pl.col("verdict") != "chosen")["pair_id"])
    b_seen, b_flag = set(b["pair_id"]), set(b.filter(pl.col("decision") == "discard")["pair_id"])
    s_seen, s_flag = set(silver["pair_id"]), set(silver.filter(pl.col("verdict") != "chosen")["pair_id"])
    ids = truth["pair_id"].to_list()
    return truth.with_columns(
        verifiable=pl.Series([p in verifiable for p in ids], dtype=pl.Boolean),
        j_seen=pl.Series([p in j_seen for p in ids], dtype=pl.Boolean),
        j_flag=pl.Series([p in j_flag for p in ids], dtype=pl.Boolean),
        b_seen=pl.Series([p in b_seen for p in ids], dtype=pl.Boolean),
        b_flag=pl.Series([p in b_flag for p in ids], dtype=pl.Boolean),
        loop_seen=pl.Series([p in b_seen or p in s_seen for p in ids], dtype=pl.Boolean),
        loop_flag=pl.Series([p in b_flag or p in s_flag for p in ids], dtype=pl.Boolean),
    )


def split_detection(outcomes: Sequence[pl.DataFrame], *, n_boot: int = 2000, seed: int = 0
                    ) -> dict[str, dict[str, dict[str, Any]]]:
    """Stage-2 judges, filter B and whole-loop detection on all pairs and per split, pooled over seeds, each
    figure with a 95% bootstrap interval that resamples pairs within every seed."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split, keep in (("all", None), ("verifiable", True), ("non-verifiable", False)):
        out[split] = {}
        for name, seen, flag in ((STAGE2_JUDGES, "j_seen", "j_flag"), (COMBINED, "b_seen", "b_flag"),
                                 (WHOLE_LOOP, "loop_seen", "loop_flag")):
            wanted = pl.col(seen) if keep is None else pl.col(seen) & (pl.col("verifiable") == keep)
            parts = [o.filter(wanted) for o in outcomes]
            out[split][name] = detection_interval(
                [(p[flag].to_numpy(), p["flipped"].to_numpy()) for p in parts], n_boot=n_boot, seed=seed)
    return out


def _votes(ws: Workspace, round_: int, pair_ids: set[str]) -> pl.DataFrame:
    """The judges' aggregated verdicts on the pairs filter A sent them (as the meter reads them)."""
    from pipeline.judges import aggregate_votes
    from schemas.labels import JUDGMENTS_SCHEMA

    empty = pl.DataFrame(schema={"pair_id": pl.String, "verdict": pl.String})
    if not pair_ids or not ws.has_table("judgments"):
        return empty
    judgments = pl.from_arrow(ws.read("judgments", schema=JUDGMENTS_SCHEMA)).filter(
        (pl.col("round") == round_) & pl.col("pair_id").is_in(list(pair_ids)))
    return aggregate_votes(judgments).select("pair_id", "verdict") if judgments.height else empty


def detection_interval(per_seed: Sequence[tuple[np.ndarray, np.ndarray]], *, n_boot: int = 2000,
                       seed: int = 0) -> dict[str, Any]:
    """Precision, recall, F1 and clean-discard rate of (flagged, flipped) boolean arrays, pooled over
    seeds, with percentile intervals from resampling pairs within each seed."""
    rng = np.random.default_rng(seed)
    arrays = [(np.asarray(f, dtype=bool), np.asarray(t, dtype=bool)) for f, t in per_seed]
    pairs = sum(f.size for f, _ in arrays)

    def rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, clean: np.ndarray) -> dict[str, np.ndarray]:
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
        recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                       where=precision + recall > 0)
        discard = np.divide(fp, clean, out=np.zeros_like(tp), where=clean > 0)
        return {"precision": precision, "recall": recall, "f1": f1, "clean_discard_rate": discard}

    def counts(index: list[np.ndarray] | None) -> tuple[np.ndarray, ...]:
        total = np.zeros((4, n_boot if index is not None else 1))
        for j, (f, t) in enumerate(arrays):
            if f.size == 0:
                continue
            fs, ts = (f[index[j]], t[index[j]]) if index is not None else (f[None, :], t[None, :])
            total += np.stack([(fs & ts).sum(1), (fs & ~ts).sum(1), (~fs & ts).sum(1), (~ts).sum(1)])
        return tuple(total.astype(np.float64))

    point = rates(*counts(None))
    boots = rates(*counts([rng.integers(0, max(f.size, 1), size=(n_boot, f.size)) for f, _ in arrays]))
    # `pairs` per seed, as the other rows of the report count them; `pooled_pairs` over all seeds
    result: dict[str, Any] = {"pairs": pairs / max(len(arrays), 1), "pooled_pairs": pairs,
                              "flipped": int(sum(t.sum() for _, t in arrays))}
    for metric, value in point.items():
        low, high = np.percentile(boots[metric], [2.5, 97.5]) if pairs else (0.0, 0.0)
        result[metric] = Interval(mean=float(value[0]), low=float(low), high=float(high), n=pairs).as_dict()
    return result
