"""The known-truth image world through the loop: `synpref bench world --modality image`.

Per seed: generate the image world (pipeline.quality.world_image), store its images, write a
noised copy of its pool with a gold seed (flips recorded in `quality/injected`), run the
configured loop and score every filter against the injected flips, as the text world does.
Seeds are averaged with intervals; the target is filter B's F1 >= 0.85. What the loop catches
depends on judges that see the image: with text-only judges and RMs (the embedded default) the
right answer is not in what they read, and the figures say so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from flows.quality import COMBINED, REPORT_FILE, aggregate_filters, run_loop_and_measure
from pipeline.quality.meter import noisy_copy
from pipeline.quality.metrics import mean_interval
from pipeline.quality.noise import NoiseConfig
from pipeline.quality.world_image import ImageWorldConfig, generate_image_world
from pipeline.store import Workspace
from schemas.config import SynprefConfig

Progress = Callable[[str], None]
SUMMARY_FILE = "world-image-report.json"


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
    summary = {
        "modality": "image",
        "world": world.model_dump(exclude={"seed"}),
        "flip_share": flip_share,
        "seeds": list(seeds),
        "pairs": float(np.mean([r["pairs"] for r in runs])),
        "flipped": float(np.mean([r["flipped"] for r in runs])),
        "filters": filters,
        "curated_error_rate": mean_interval([r["curated"]["error_rate"] for r in runs]).as_dict(),
        "targets": {"combined stage-2 F1 >= 0.85": combined is not None and combined >= 0.85},
        "per_seed": runs,
    }
    Workspace(out).write_json(SUMMARY_FILE, summary)
    return summary
