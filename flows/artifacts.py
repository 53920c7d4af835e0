"""The run's pages in the Prefect UI: run names and artifacts per round, stage 2 and the report.

After each stage-1 round and after stage 2 the flow publishes the round table (a table
artifact of pipeline.report.round_rows), the decisions summary and the trust summary (markdown:
whatever the `trust` key of the summary holds, printed as it is); after the export, links to
the report and its plots. Keys carry the workspace's name, so runs of one workspace form a
history per key and different workspaces never mix.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import polars as pl
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.loop_state import STAGE2_DIR, round_summaries
from pipeline.report import REPORT_DIR, round_rows
from pipeline.store import Workspace
from schemas.labels import DECISIONS_SCHEMA


def workspace_name(uri: str) -> str:
    return PurePosixPath(str(uri).rstrip("/")).name or str(uri)


def run_name(flow_name: str) -> str:
    """`<flow> <config> @ <workspace>` from the running flow's parameters (a flow_run_name)."""
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    config = params.get("config")
    workspace = config.get("workspace") if isinstance(config, dict) else getattr(config, "workspace", "?")
    return f"{flow_name} {params.get('config_name') or 'config'} @ {workspace_name(str(workspace))}"


def artifact_key(ws: Workspace, what: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", workspace_name(ws.uri).lower()).strip("-") or "workspace"
    return f"{slug}-{what}"


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    return "-" if value is None else value


def _markdown_value(value: Any, depth: int = 0) -> list[str]:
    """A nested summary (dicts, lists, numbers) as an indented markdown list."""
    pad = "  " * depth
    if isinstance(value, dict):
        lines = []
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines += [f"{pad}- **{k}**", *_markdown_value(v, depth + 1)]
            else:
                lines.append(f"{pad}- **{k}**: {_cell(v)}")
        return lines
    if isinstance(value, list):
        if all(not isinstance(v, dict | list) for v in value):
            return [f"{pad}- {', '.join(str(_cell(v)) for v in value[:50])}" + (" ..." if len(value) > 50
                                                                                 else "")]
        return [line for v in value for line in _markdown_value(v, depth)]
    return [f"{pad}- {_cell(value)}"]


def trust_markdown(title: str, summary: dict[str, Any]) -> str:
    trust = summary.get("trust")
    if not trust:
        return f"# {title}\n\nThis summary records no trust measurements (no `trust` key).\n"
    return f"# {title}\n\n" + "\n".join(_markdown_value(trust)) + "\n"


def round_decisions_markdown(summary: dict[str, Any]) -> str:
    """What a round decided: pool composition, what the judges said, retrieval."""
    judges = summary.get("judges") or {}
    lines = [f"# Round {summary['round']} decisions", "", "| pool | pairs |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in (summary.get("counts") or {}).items()]
    verdicts = judges.get("verdicts") if isinstance(judges, dict) else None
    if isinstance(verdicts, dict) and verdicts:
        lines += ["", "| judges' verdict | pairs |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in verdicts.items()]
    retrieval = summary.get("retrieval") or {}
    if retrieval:
        lines += ["", f"Retrieval: {retrieval.get('retrieved', 0)} pairs near "
                  f"{retrieval.get('failures', '?')} RM failures among {retrieval.get('queries', '?')} "
                  "gold queries."]
    lines += ["", f"Gold accuracy of the round's RM: {_cell(summary.get('gold_accuracy'))}"]
    return "\n".join(lines) + "\n"


def stage2_decisions_markdown(ws: Workspace, summary: dict[str, Any]) -> str:
    """Stage 2's decisions per filter and decision (and the most common reasons)."""
    lines = ["# Stage 2 decisions", ""]
    outcome = summary.get("outcome") or {}
    if outcome:
        lines += ["| outcome | pairs |", "|---|---:|", *[f"| {k} | {v} |" for k, v in outcome.items()], ""]
    if ws.has_table("decisions"):
        frame = pl.from_arrow(ws.read("decisions", schema=DECISIONS_SCHEMA))
        by = frame.group_by("filter", "decision").len().sort("filter", "decision")  # type: ignore[union-attr]
        lines += ["| filter | decision | pairs |", "|---|---|---:|"]
        lines += [f"| {f} | {d} | {n} |" for f, d, n in by.iter_rows()]
        reasons = frame.group_by("reason").len().sort("len", descending=True).head(10)  # type: ignore[union-attr]
        lines += ["", "| most common reasons | pairs |", "|---|---:|"]
        lines += [f"| {r.replace('|', '/')} | {n} |" for r, n in reasons.iter_rows()]
    return "\n".join(lines) + "\n"


def _round_table(ws: Workspace, stage2: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{k: _cell(v) for k, v in row.items()} for row in round_rows(round_summaries(ws), stage2)]


def publish_round(ws: Workspace, summary: dict[str, Any]) -> None:
    """The round table so far, this round's decisions and its trust summary."""
    n = summary["round"]
    create_table_artifact(_round_table(ws, None), key=artifact_key(ws, "rounds"),
                          description=f"Rounds of {ws.uri} after round {n}")
    create_markdown_artifact(round_decisions_markdown(summary), key=artifact_key(ws, f"round-{n}-decisions"),
                             description=f"What round {n} decided")
    create_markdown_artifact(trust_markdown(f"Round {n} trust", summary),
                             key=artifact_key(ws, f"round-{n}-trust"),
                             description=f"Trust measurements of round {n}")


def publish_stage2(ws: Workspace, summary: dict[str, Any] | None) -> None:
    """The whole round table with stage 2, its decisions and its trust summary."""
    summary = summary if summary is not None else ws.read_json(f"{STAGE2_DIR}/summary.json")
    if summary is None:
        return
    create_table_artifact(_round_table(ws, summary), key=artifact_key(ws, "rounds"),
                          description=f"Rounds of {ws.uri} with stage 2")
    create_markdown_artifact(stage2_decisions_markdown(ws, summary), key=artifact_key(ws, "stage2-decisions"),
                             description="What stage 2 decided")
    create_markdown_artifact(trust_markdown("Stage 2 trust", summary), key=artifact_key(ws, "stage2-trust"),
                             description="Trust measurements of stage 2")


def publish_report(ws: Workspace, report: dict[str, str]) -> None:
    """Links to the run report (HTML with the plots embedded) and to each plot."""
    for what, name in (("report", "html"), ("gold-accuracy-plot", "gold_accuracy_png"),
                       ("pool-composition-plot", "composition_png")):
        path = report.get(name) or ws.path(REPORT_DIR, name)
        link = path if "://" in path else f"file://{path}"
        create_link_artifact(link, link_text=PurePosixPath(path).name, key=artifact_key(ws, what),
                             description=f"The run report of {ws.uri}")
