"""Export: the curated set (gold, silver, stage-2 keeps and flips) and the run report."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.loop_state import STAGE2_DIR, decisions, labels, round_summaries
from flows.tasks import export_task
from pipeline.consistency import curated_selection
from pipeline.report import write_report
from pipeline.store import Workspace
from schemas.config import SynprefConfig


@flow(name="export")
def export_flow(config: SynprefConfig) -> dict[str, Any]:
    ws = Workspace(config.workspace)
    stage2 = ws.read_json(f"{STAGE2_DIR}/summary.json")
    selection = curated_selection(labels(ws, "gold"), labels(ws, "silver"),
                                  decisions(ws) if stage2 is not None else None)
    if not config.export.include_flipped:
        selection = selection.filter(~selection["flipped"])
    exported = export_task(ws.uri, selection, config.export.shard_rows)
    paths = write_report(ws, round_summaries(ws), stage2, export=exported)
    return {"export": exported, "report": paths.__dict__, "selected": selection.height}
