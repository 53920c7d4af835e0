"""Curate: the whole method from one config: ingest, clean, stage 1 rounds, stage 2, export.

Every stage skips what the workspace already records, so a killed run, re-run with the same
config, continues from its last completed round or step and exports exactly what an
uninterrupted run would have.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.clean import clean_flow
from flows.export import export_flow
from flows.ingest import ingest_flow
from flows.runners import make_task_runner
from flows.stage1 import stage1_flow
from flows.stage2 import stage2_flow
from schemas.config import SynprefConfig


@flow(name="curate")
def curate_flow(
    config: SynprefConfig, runner: str = "local", runner_address: str | None = None
) -> dict[str, Any]:
    ingested = ingest_flow(config)
    cleaned = clean_flow(config)
    rounds = stage1_flow(config, runner, runner_address)
    stage2 = None
    if config.stage2.enabled:
        task_runner = make_task_runner(runner, address=runner_address)
        stage2 = stage2_flow.with_options(task_runner=task_runner)(config)
    exported = export_flow(config)
    return {"ingest": ingested, "clean": cleaned, "rounds": rounds, "stage2": stage2, **exported}
