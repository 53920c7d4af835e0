"""Ingest: every configured source into the workspace's pool (bad rows to quarantine).

Sources are read one after another: each appends to the same pool table, keyed by pair_id, so a
re-run (or a run killed half-way) adds nothing twice.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.tasks import ingest_source_task
from pipeline.store import Workspace
from schemas.config import SynprefConfig
from schemas.errors import ConfigError


@flow(name="ingest")
def ingest_flow(config: SynprefConfig) -> list[dict[str, Any]]:
    if not config.sources:
        raise ConfigError("the config names no [[sources]] to ingest")
    ws = Workspace(config.workspace)
    return [ingest_source_task(ws.uri, source) for source in config.sources]
