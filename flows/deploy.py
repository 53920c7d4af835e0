"""Deployable entry point: the curate flow from a config file path, for Prefect work pools.

`prefect.yaml` deploys `curate_from_config`; `synpref flows serve` serves it from this process
(both need a Prefect server: PREFECT_API_URL). Runs then show in the Prefect UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.curate import curate_flow
from schemas.config import SynprefConfig

DEPLOYMENT_NAME = "synpref-curate"


@flow(name="synpref-curate-from-config", flow_run_name="curate-from-config {config_path}")
def curate_from_config(
    config_path: str, runner: str = "local", runner_address: str | None = None
) -> dict[str, Any]:
    """Load `config_path` (synpref.toml) on the worker and run the whole loop (its run is named
    `curate <config> @ <workspace>`)."""
    return curate_flow(SynprefConfig.load(config_path), runner, runner_address, Path(config_path).stem)


def serve(config_path: str, *, runner: str = "local", runner_address: str | None = None,
          cron: str | None = None) -> None:
    """Serve the deployment from this process until interrupted."""
    curate_from_config.serve(
        name=DEPLOYMENT_NAME,
        parameters={"config_path": config_path, "runner": runner, "runner_address": runner_address},
        cron=cron,
    )
