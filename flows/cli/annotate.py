"""`synpref annotate push | pull | status`: human verification in Argilla, composed with the workspace.

push reads pool + attributes + judgments and sends the chosen pairs (highest protocol priority
first); pull appends the submitted responses to `verifications` and rebuilds the human part of
`gold` from the majority of submitted verdicts; status shows progress and agreement. Every
command connects first, so an unreachable server or a wrong key leaves the workspace unchanged.
`push_to_argilla` / `pull_from_argilla` are the same steps for flows that run the loop.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

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

if TYPE_CHECKING:
    import argilla as rg

    from annotation.push import PushStats
    from pipeline.store import Workspace
    from schemas.attributes import PreferenceAttributes
    from schemas.config import ArgillaConfig
    from schemas.labels import Judgment, Verification

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


def open_dataset(cfg: ArgillaConfig, *, create: bool, api_url: str | None = None) -> tuple[rg.Argilla, Any]:
    """Client + verification dataset. URL: --api-url, else $ARGILLA_API_URL (the config's
    api_url_env), else the config's api_url; the key only from the env var the config names."""
    from annotation.client import connect
    from annotation.push import ensure_dataset, find_dataset

    url = api_url or os.environ.get(cfg.api_url_env, "").strip() or cfg.api_url
    client = connect(url, cfg.api_key_env, timeout=cfg.timeout_s)
    if create:
        return client, ensure_dataset(client, cfg.dataset, cfg.workspace, overlap=cfg.overlap)
    dataset = find_dataset(client, cfg.dataset, cfg.workspace)
    if dataset is None:
        raise UserError(
            f"no Argilla dataset {cfg.workspace}/{cfg.dataset} yet: run `synpref annotate push` first"
        )
    return client, dataset


def _attributes(ws: Workspace, pair_ids: set[str] | None) -> dict[str, PreferenceAttributes]:
    import polars as pl

    from schemas.attributes import ATTRIBUTES_SCHEMA, PreferenceAttributes

    if not ws.has_table("attributes"):
        return {}
    frame = ws.scan("attributes", schema=ATTRIBUTES_SCHEMA)
    if pair_ids is not None:
        frame = frame.filter(pl.col("pair_id").is_in(list(pair_ids)))
    out: dict[str, PreferenceAttributes] = {}
    for row in frame.collect().to_dicts():
        pair_id = row.pop("pair_id")
        row.pop("model", None)
        try:
            out[pair_id] = PreferenceAttributes(**row)
        except ValueError as exc:
            err_console.print(f"[yellow]attributes row {pair_id}: ignored ({exc.errors()[0]['msg']})[/]")  # type: ignore[attr-defined]
    return out


def _judgments(ws: Workspace, pair_ids: set[str]) -> list[Judgment]:
    import polars as pl

    from schemas.labels import JUDGMENTS_SCHEMA, Judgment

    if not ws.has_table("judgments") or not pair_ids:
        return []
    frame = ws.scan("judgments", schema=JUDGMENTS_SCHEMA).filter(pl.col("pair_id").is_in(list(pair_ids)))
    return [Judgment(**{k: v for k, v in r.items() if v is not None}) for r in frame.collect().to_dicts()]


def select_for_push(
    ws: Workspace, *, limit: int | None, exclude: set[str] = frozenset(), include_verified: bool = False
) -> list[str]:
    """Active-pool pair_ids in protocol order (objective, low controversy first), minus verified
    ones and `exclude` (pairs already in Argilla, so `--limit N` twice sends the next N)."""
    import polars as pl

    from annotation.records import pair_priority
    from pipeline.pool import active_pool

    ids = active_pool(ws).select("pair_id").collect()["pair_id"].to_list()
    if not include_verified and ws.has_table("verifications"):
        done = set(ws.read("verifications", columns=["pair_id"]).column("pair_id").to_pylist())
        ids = [i for i in ids if i not in done]
    ids = [i for i in ids if i not in exclude]
    attrs = _attributes(ws, None)
    ranked = pl.DataFrame({"pair_id": ids, "priority": [pair_priority(attrs.get(i)) for i in ids]})
    ranked = ranked.sort(["priority", "pair_id"])
    if limit is not None:
        ranked = ranked.head(limit)
    return ranked["pair_id"].to_list()


def push_to_argilla(
    ws: Workspace,
    cfg: ArgillaConfig,
    pair_ids: list[str] | None = None,
    *,
    limit: int | None = None,
    round: int = 0,
    api_url: str | None = None,
    update_existing: bool = False,
) -> PushStats:
    """Push these pairs (None: the next `limit` unverified pairs not yet in Argilla, by priority)
    with their attributes and judge votes; idempotent by pair_id."""
    from annotation.push import existing_record_ids, push_pairs
    from pipeline.pool import load_records

    client, dataset = open_dataset(cfg, create=True, api_url=api_url)
    if pair_ids is None:
        exclude = set() if update_existing else existing_record_ids(client, dataset)
        pair_ids = select_for_push(ws, limit=limit, exclude=exclude)
    pairs = load_records(ws, pair_ids)
    wanted = set(pair_ids)
    return push_pairs(
        client,
        dataset,
        pairs,
        _attributes(ws, wanted),
        _judgments(ws, wanted),
        round=round,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        update_existing=update_existing,
    )


@dataclass(frozen=True)
class PullSummary:
    pulled: int
    new_rows: int
    discarded: int
    gold_labels: int
    records_total: int
    records_answered: int
    problems: list[str]


def _verification_rows(verifications: list[Verification]) -> list[dict[str, Any]]:
    return [
        v.model_dump(mode="python") | {"verdict": v.verdict.value, "status": v.status.value}
        for v in verifications
    ]


def pull_from_argilla(ws: Workspace, cfg: ArgillaConfig, *, api_url: str | None = None) -> PullSummary:
    """Append new verifications; rebuild the human gold labels from every verification."""
    import pyarrow as pa

    from annotation.gold import gold_labels
    from annotation.pull import pull_verifications
    from schemas.labels import LABELS_SCHEMA, VERIFICATIONS_SCHEMA, LabelOrigin, Verification

    client, dataset = open_dataset(cfg, create=False, api_url=api_url)
    result = pull_verifications(client, dataset)
    rows = pa.Table.from_pylist(_verification_rows(result.verifications), schema=VERIFICATIONS_SCHEMA)
    new_rows = ws.append(
        "verifications", rows, unique_key=["pair_id", "annotator", "record_id"], schema=VERIFICATIONS_SCHEMA
    )
    stored = [Verification(**r) for r in ws.read("verifications", schema=VERIFICATIONS_SCHEMA).to_pylist()]
    gold = [g.to_row() for g in gold_labels(stored, min_votes=cfg.min_votes)]
    others = []
    if ws.has_table("gold"):
        others = [
            r for r in ws.read("gold", schema=LABELS_SCHEMA).to_pylist() if r["origin"] != LabelOrigin.human
        ]
    ws.replace("gold", pa.Table.from_pylist(others + gold, schema=LABELS_SCHEMA), schema=LABELS_SCHEMA)
    return PullSummary(
        pulled=len(result.verifications),
        new_rows=new_rows,
        discarded=sum(1 for v in result.verifications if v.status.value == "discarded"),
        gold_labels=len(gold),
        records_total=result.records_total,
        records_answered=result.records_answered,
        problems=result.problems,
    )


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
