"""`synpref curate`: the whole loop from one config; `synpref flows serve`: run it as a deployment."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Annotated

import typer

from flows.cli.common import (
    AddressOpt,
    ConfigOpt,
    UserError,
    WorkspaceOpt,
    console,
    friendly_errors,
    load_config,
    open_workspace,
    table,
)

RunnerOpt = Annotated[
    str, typer.Option("--runner", help="Where shard tasks run: local | dask | ray.")
]


def _quiet_prefect() -> None:
    """Prefect's per-task logs drown the summary (PREFECT_LOGGING_LEVEL overrides this), and its
    temporary local server needs more than the default 20 s to start on a busy machine."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@contextlib.contextmanager
def _progress_view(quiet: bool, as_json: bool) -> Iterator[None]:
    """Where the run's progress events go: nowhere, JSON lines, a rich bar (TTY) or plain lines."""
    from flows.progress import json_lines, listening, plain_lines, rich_view

    if quiet:
        yield
    elif as_json:
        with listening(json_lines(sys.stdout)):
            yield
    elif console.is_terminal:
        with rich_view(console) as show, listening(show):
            yield
    else:
        with listening(plain_lines(console.file)):
            yield


def _dash(value: object) -> object:
    return "-" if value is None else value


def register(app: typer.Typer) -> None:
    """Add `curate` and the `flows` group to the synpref app."""

    @app.command("curate")
    @friendly_errors
    def curate(
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
        runner: RunnerOpt = "local",
        runner_address: AddressOpt = None,
        fresh: Annotated[bool, typer.Option("--fresh", help="Delete the workspace and start over.")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only the result.")] = False,
        as_json: Annotated[bool, typer.Option(
            "--json", help="Progress events and the result as JSON lines on stdout (for scripts).")] = False,
    ) -> None:
        """Run the loop end to end: ingest, clean, stage-1 rounds, stage 2, export and report.

        A re-run continues from the last completed round or step recorded in the workspace.
        """
        _quiet_prefect()
        from flows.runners import RUNNERS

        if runner not in RUNNERS:
            raise UserError(f"--runner: choose one of {', '.join(RUNNERS)}")
        cfg = load_config(config)
        if workspace:
            cfg = cfg.model_copy(update={"workspace": workspace})
        from flows.curate import curate_flow
        from pipeline.lease import LEASE_FILE
        from pipeline.report import round_rows
        from pipeline.report_trust import trust_lines

        ws = open_workspace(cfg, None, write=True)
        if fresh:  # everything but the lease this run now holds
            for name in ws.listdir():
                if name != LEASE_FILE:
                    ws.remove(name)
        started = time.perf_counter()
        name = config.stem if config is not None else None
        with _progress_view(quiet, as_json):
            result = curate_flow(cfg, runner, runner_address, name)
        elapsed = time.perf_counter() - started
        if as_json:
            print(json.dumps({"event": "result", "curated": result["selected"], "seconds": round(elapsed, 1),
                              "export": result["export"], "report": result["report"],
                              "stage2": result["stage2"], "rounds": result["rounds"]}, default=str))
            return
        if quiet:
            console.print(f"curated pairs: {result['selected']}  ->  {result['export'].get('path')}")
            return
        rows = round_rows(result["rounds"], result["stage2"])
        console.print(table(
            "Rounds",
            ["round", "gold", "silver", "kept", "flipped", "unlabeled", "dropped", "retrieved", "judged",
             "voting judges", "agreement", "gold-eval accuracy [95% CI], n", "changed", "abstained"],
            [[r["round"], r["gold"], r["silver"], r["kept"], r["flipped"], r["unlabeled"], r["dropped"],
              r["retrieved"], r["judged"], r["voting_judges"],
              r["judge_agreement"] if r["judge_agreement"] is not None else "-",
              r["gold_eval"], _dash(r["changed"]), _dash(r["abstained"])] for r in rows],
        ))
        if result["stage2"]:
            console.print(f"stage 2: {result['stage2']['outcome']} "
                          f"(best RM from round {result['stage2']['best_round']})")
        # What evaluation gold says of the run's models, and every stage that abstained.
        for line in trust_lines(result["rounds"], result["stage2"]):
            console.print(line, style="bold yellow" if line.startswith("WARNING") else None,
                          markup=False, highlight=False)
        exported = result["export"]
        where = exported.get("out_dir") or exported.get("path") or ws.path("curated")
        console.print(f"curated pairs: {result['selected']}  ->  {where}")
        console.print(f"report: {result['report']['html']}  (table: {result['report']['markdown']})")
        console.print(f"done in {elapsed:.0f} s")

    flows_app = typer.Typer(help="Run the curate flow as a Prefect deployment (needs PREFECT_API_URL).",
                            no_args_is_help=True)
    app.add_typer(flows_app, name="flows")

    @flows_app.command("serve")
    @friendly_errors
    def serve(
        config: Annotated[str, typer.Option("--config", "-c", help="synpref.toml the runs read.")],
        runner: RunnerOpt = "local",
        runner_address: AddressOpt = None,
        cron: Annotated[str | None, typer.Option(help="Also run on this cron schedule.")] = None,
    ) -> None:
        """Serve the curate deployment from this process; trigger runs from the Prefect UI or API."""
        if not os.environ.get("PREFECT_API_URL"):
            raise UserError("set PREFECT_API_URL to the Prefect server the deployment registers with")
        from flows.deploy import serve as serve_deployment

        serve_deployment(os.path.abspath(config), runner=runner, runner_address=runner_address, cron=cron)
