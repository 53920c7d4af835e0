"""Curate: the whole method from one config: ingest, clean, stage 1 rounds, stage 2, export.

Every stage skips what the workspace already records, so a killed run, re-run with the same
config, continues from its last completed round or step and exports exactly what an
uninterrupted run would have. The run holds the workspace's lease throughout, so a deployment
started on a workspace that another run writes is refused instead of corrupting it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.artifacts import publish_report, publish_stage2, run_name
from flows.clean import clean_flow
from flows.export import export_flow
from flows.ingest import ingest_flow
from flows.progress import progress
from flows.runners import make_task_runner, run_cluster
from flows.stage1 import stage1_flow
from flows.stage2 import stage2_flow
from pipeline.lease import acquire
from pipeline.store import Workspace
from schemas.config import SynprefConfig


def _curate_run_name() -> str:
    return run_name("curate")


@flow(name="curate", flow_run_name=_curate_run_name)
def curate_flow(
    config: SynprefConfig, runner: str = "local", runner_address: str | None = None,
    config_name: str | None = None,
) -> dict[str, Any]:
    """The whole loop under the workspace's lease; `config_name` names the run (the config file)."""
    lease = acquire(Workspace(config.workspace), f"curate flow ({config_name or 'config'})")
    # One local cluster for the whole run: workers keep their imports and models from step to step.
    with lease, run_cluster(runner, runner_address) as runner_address:
        progress("ingest", None, "ingest", 0, 1)
        ingested = ingest_flow(config, runner, runner_address)
        progress("ingest", None, "ingest", 1, 1)
        progress("clean", None, "clean", 0, 1)
        cleaned = clean_flow(config, runner, runner_address)
        progress("clean", None, "clean", 1, 1)
        rounds = stage1_flow(config, runner, runner_address, config_name)
        stage2 = None
        if config.stage2.enabled:
            task_runner = make_task_runner(runner, address=runner_address)
            stage2 = stage2_flow.with_options(task_runner=task_runner)(config)
            publish_stage2(Workspace(config.workspace), stage2)
        progress("export", None, "export", 0, 1)
        exported = export_flow(config, runner, runner_address)
        progress("export", None, "export", 1, 1)
        publish_report(Workspace(config.workspace), exported["report"])
    return {"ingest": ingested, "clean": cleaned, "rounds": rounds, "stage2": stage2, **exported}
