"""`synpref bench curation`: does the curated export train a better RM than the raw pool?

The question an RM trainer asks of any curation run. The same kind of reward model is trained
on the workspace's raw active pool (the sources' own labels) and on the loop's curated selection
(gold, silver, stage-2 keeps and flips), and both are scored on held-out human-labeled files that
nothing in the run trained on, with bootstrap CIs and the length-bias split.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import polars as pl
import typer

from flows.bench.machine import machine_info
from flows.cli.common import ConfigOpt, WorkspaceOpt, console, friendly_errors, load_config, table


def curation_conditions(ws: Any) -> dict[str, pl.DataFrame]:
    """(pair_id, verdict) per training set: the raw active pool and the loop's curated selection."""
    from flows.loop_state import STAGE2_DIR, active_ids, decisions, labels
    from pipeline.consistency import curated_selection

    raw = active_ids(ws).select("pair_id", verdict=pl.lit("chosen"))
    stage2 = decisions(ws) if ws.read_json(f"{STAGE2_DIR}/summary.json") is not None else None
    selection = curated_selection(labels(ws, "gold"), labels(ws, "silver"), stage2)
    curated = selection.select("pair_id", verdict=pl.when(pl.col("flipped")).then(pl.lit("rejected"))
                               .otherwise(pl.lit("chosen")))
    return {"raw pool labels": raw, "curated export": curated}


def compare(ws: Any, cfg: Any, files: list[Path], limit: int | None, seed: int = 0) -> dict[str, Any]:
    """Held-out accuracy (95% bootstrap CI) and length bias of an RM per training set."""
    from pipeline.quality.heldout import heldout_correct
    from pipeline.rm.evaluate import bootstrap_accuracy
    from pipeline.sources import load_pairs
    from schemas.pair import PairRecord

    records: list[PairRecord] = []
    for file in files:
        if not file.exists():
            raise FileNotFoundError(f"evaluation file not found: {file}")
        loaded = load_pairs(str(file), limit=limit)
        records += [PairRecord.from_row(r) for r in loaded.pairs.to_pylist()]
    conditions = curation_conditions(ws)
    correct = heldout_correct(ws, cfg.rm, conditions, None, records, out_dir="bench/curation")
    longer = np.array([len(r.chosen) > len(r.rejected) for r in records])
    shorter = np.array([len(r.chosen) < len(r.rejected) for r in records])
    out: dict[str, Any] = {"heldout_pairs": len(records), "files": [str(f) for f in files], "conditions": {}}
    for name, c in correct.items():
        relabeled = int((conditions[name]["verdict"] == "rejected").sum())
        out["conditions"][name] = {
            "train_pairs": conditions[name].height, "relabeled": relabeled,
            "accuracy": bootstrap_accuracy(c, seed=seed).__dict__,
            "chosen_longer": bootstrap_accuracy(c[longer], seed=seed).__dict__,
            "chosen_shorter": bootstrap_accuracy(c[shorter], seed=seed).__dict__,
        }
    return out


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("curation")
    @friendly_errors
    def bench_curation(
        on: Annotated[list[Path], typer.Option("--on", help="Held-out benchmark file; repeat it.")],
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
        limit: Annotated[int | None, typer.Option(help="Pairs read per file at most.")] = None,
        out: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    ) -> None:
        """Train the same RM on the raw pool and on the curated export; compare them held out."""
        from pipeline.store import Workspace

        cfg = load_config(config)
        ws = Workspace(workspace or cfg.workspace)
        console.print(machine_info())
        started = time.perf_counter()
        report = compare(ws, cfg, on, limit)
        report["seconds"] = round(time.perf_counter() - started, 1)
        rows = []
        for name, c in report["conditions"].items():
            a, lo, sh = c["accuracy"], c["chosen_longer"], c["chosen_shorter"]
            rows.append([name, c["train_pairs"], c["relabeled"],
                         f"{a['accuracy']:.3f} [{a['low']:.3f}, {a['high']:.3f}]",
                         f"{lo['accuracy']:.3f} / {sh['accuracy']:.3f}"])
        console.print(table(f"RM trained on each set, {report['heldout_pairs']} held-out pairs",
                            ["trained on", "pairs", "relabeled", "held-out accuracy (95% CI)",
                             "longer / shorter chosen"], rows))
        if out is not None:
            out.write_text(json.dumps(report, indent=2))
