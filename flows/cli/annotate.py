"""`synpref annotate push | pull | status`: human verification in Argilla, composed with the workspace.

push reads pool + attributes + judgments and sends the chosen pairs (highest protocol priority
first); pull appends the submitted responses to `verifications` and rebuilds the human part of
`gold` from the majority of submitted verdicts; status shows progress and agreement. Every
command connects first, so an unreachable server or a wrong key leaves the workspace unchanged.
The steps themselves live in flows/annotation_sync.py, shared with the loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from flows.annotation_sync import open_dataset, pull_from_argilla, push_to_argilla
from flows.cli.common import (
    ConfigOpt,
    UserError,
    WorkspaceOpt,
    console,
    err_console,
    friendly_errors,
    load_config,
    open_workspace,
    table,
)

F = TypeVar("F", bound=Callable[..., Any])


def argilla_errors(func: F) -> F:
    """Requests the server refuses mid-command (after a good connection) become one clear line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from argilla._exceptions import ArgillaError

        try:
            return func(*args, **kwargs)
        except ArgillaError as exc:
            raise UserError(f"Argilla refused a request: {exc}") from None

    return wrapper  # type: ignore[return-value]


ApiUrlOpt = Annotated[str | None, typer.Option("--api-url", help="Argilla URL (default: the config's).")]


def register(app: typer.Typer) -> None:
    """Add the `annotate` command group to the synpref app."""
    group = typer.Typer(help="Human verification in Argilla: push pairs, pull verdicts, show progress.")
    app.add_typer(group, name="annotate")

    @group.command("push")
    @friendly_errors
    @argilla_errors
    def push(
        limit: Annotated[
            int | None, typer.Option("--limit", "-n", help="Push at most this many pairs.")
        ] = None,
        round: Annotated[int, typer.Option("--round", help="Loop round recorded on the records.")] = 0,
        update: Annotated[bool, typer.Option("--update", help="Re-send records already in Argilla.")] = False,
        api_url: ApiUrlOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Send unverified pairs (objective, low-controversy first) with judge votes as suggestions."""

        cfg = load_config(config)
        ws = open_workspace(cfg, workspace, write=True, needs=["pool"])
        stats = push_to_argilla(
            ws, cfg.argilla, limit=limit, round=round, api_url=api_url, update_existing=update
        )
        console.print(
            table(
                f"Pushed to {stats.workspace}/{stats.dataset}",
                ["selected", "created", "updated", "already there", "batches", "records/s"],
                [
                    [
                        stats.requested,
                        stats.created,
                        stats.updated,
                        stats.skipped,
                        stats.batches,
                        f"{stats.records_per_s:.1f}",
                    ]
                ],
            )
        )

    @group.command("pull")
    @friendly_errors
    @argilla_errors
    def pull(api_url: ApiUrlOpt = None, config: ConfigOpt = None, workspace: WorkspaceOpt = None) -> None:
        """Append submitted responses to `verifications` and rebuild the human gold labels."""

        cfg = load_config(config)
        ws = open_workspace(cfg, workspace, write=True)
        summary = pull_from_argilla(ws, cfg.argilla, api_url=api_url)
        console.print(
            table(
                "Pulled from Argilla",
                ["records", "answered", "responses", "new rows", "discarded", "gold labels"],
                [[summary.records_total, summary.records_answered, summary.pulled, summary.new_rows,
                  summary.discarded, summary.gold_labels]],
            )
        )  # fmt: skip
        for problem in summary.problems:
            err_console.print(f"[yellow]skipped:[/] {problem}")

    @group.command("status")
    @friendly_errors
    @argilla_errors
    def status(api_url: ApiUrlOpt = None, config: ConfigOpt = None) -> None:
        """Live progress, per-annotator counts and agreement (Cohen's kappa, Krippendorff's alpha)."""
        from annotation.agreement import agreement_report, progress
        from annotation.pull import pull_verifications

        cfg = load_config(config).argilla
        client, dataset = open_dataset(cfg, create=False, api_url=api_url)
        result = pull_verifications(client, dataset)
        done = progress(result.records_total, result.verifications, overlap=cfg.overlap)
        report = agreement_report(result.verifications)
        console.print(
            table(
                f"Progress of {cfg.workspace}/{cfg.dataset} (overlap {cfg.overlap})",
                ["records", "answered", "completed", "pending", "all discarded", "completed %"],
                [[done.records, done.answered, done.completed, done.pending, done.discarded_items,
                  f"{100 * done.completed_share:.1f}"]],
            )
        )  # fmt: skip
        console.print(
            table(
                "Annotators",
                ["annotator", "submitted", "discarded", "compared", "agrees with majority"],
                [
                    [a.annotator, a.submitted, a.discarded, a.compared, a.majority_agreement]
                    for a in report.annotators
                ],
            )
        )
        rows = [
            [f"{p.annotator_a} / {p.annotator_b}", "Cohen's kappa", p.items, p.kappa] for p in report.pairwise
        ]
        rows.append(
            ["all annotators", "Krippendorff's alpha (nominal)", report.overlapping_items, report.alpha]
        )
        console.print(table("Agreement", ["annotators", "measure", "overlapping items", "value"], rows))
