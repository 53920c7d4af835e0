"""`synpref embed`, `synpref dedup`, `synpref neighbors`: embeddings, near-duplicates, and a
person-readable look at a pair's nearest neighbours."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from flows.cli.common import (
    AddressOpt,
    ConfigOpt,
    UserError,
    WorkersOpt,
    WorkspaceOpt,
    console,
    friendly_errors,
    load_config,
    open_workspace,
    runner_opt,
    table,
)

VIEW_CHOICES = ("conversation", "conversation+attributes", "both")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the synpref app."""
    app.command("embed")(embed)
    app.command("dedup")(dedup)
    app.command("neighbors")(neighbors)


@friendly_errors
def embed(
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    view: Annotated[str, typer.Option(
        help="conversation | conversation+attributes | both (the attributes view only once the "
        "workspace holds attributes)")] = "both",
    model: Annotated[str | None, typer.Option(help="Model id or local path (default: the config's).")] = None,
    backend: Annotated[
        str | None, typer.Option(help="auto | torch | torch-bf16 | torch-fp16 | openvino")
    ] = None,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Run modeling code shipped with the model (jina-embeddings-v3 needs "
        "it; default: the config's embed.trust_remote_code).")] = False,
) -> None:
    """Embed the active pool (only pairs not embedded yet) and say which backend ran how fast."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pipeline.embed import embed_pairs

    if view not in VIEW_CHOICES:
        raise UserError(f"--view must be one of {', '.join(VIEW_CHOICES)}, not {view!r}")
    cfg = load_config(config)
    embed_cfg = cfg.embed.model_copy(
        update={k: v for k, v in {"model": model, "backend": backend,
                                  "trust_remote_code": trust_remote_code or None}.items() if v is not None}
    )
    ws = open_workspace(cfg, workspace, write=True)
    views = ["conversation", "conversation+attributes"] if view == "both" else [view]
    if view == "both" and not (ws.has_table("attributes") and ws.row_count("attributes")):
        views = ["conversation"]
        console.print("no attributes in the workspace yet: embedding the conversation view only "
                      "(the conversation+attributes view follows once `synpref attributes` has run)")
    rows = []
    for v in views:
        with Progress(
            TextColumn(f"embedding {v}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        ) as bar:
            task = bar.add_task(v, total=None)
            stats = embed_pairs(
                ws, embed_cfg, v,
                progress=lambda done, total, t=task: bar.update(t, completed=done, total=total),
            )
        rows.append([v, stats.requested, stats.embedded, stats.cached, stats.backend,
                     f"{stats.texts_per_s:.1f}" if stats.embedded else "-"])
    console.print(table(escape(f"embeddings of {embed_cfg.model} in {ws.uri}"),
                        ["view", "pairs", "embedded", "cached", "backend", "texts/s"], rows))


@friendly_errors
def dedup(
    semantic: Annotated[bool, typer.Option("--semantic", help="Drop near-duplicates by embedding cosine.")]
    = False,
    exact: Annotated[bool, typer.Option("--exact", help="Drop exact duplicates (normalized text).")] = False,
    threshold: Annotated[
        float | None, typer.Option(help="Cosine at or above which two pairs are duplicates (default 0.95).")
    ] = None,
    runner: Annotated[str, runner_opt("the embedding and semantic-dedup tasks")] = "local",
    workers: WorkersOpt = None,
    runner_address: AddressOpt = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Remove near-duplicate pairs (--semantic, the default) and/or exact ones (--exact) from the
    active pool; every removal is recorded in the `dropped` table.

    Semantic dedup runs as the clustered stage (k-means cells, a task per group of cells, one
    merge), so no process holds the pool's vectors: in this process, one task after another, or
    with --runner / --workers as tasks on Prefect's task runner of that name."""
    from flows.runners import RUNNERS

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be within [0, 1], not {threshold}")
    if runner not in RUNNERS:
        raise UserError(f"--runner: choose one of {', '.join(RUNNERS)}")
    if not exact:
        semantic = True  # exact dedup also runs in `synpref clean`; near-duplicates are this command's own
    cfg = load_config(config)
    ws = open_workspace(cfg, workspace, write=True)
    if exact:
        from pipeline.clean import exact_dedup

        stats = exact_dedup(ws)
        console.print(f"exact dedup: {stats}")
    if semantic:
        dedup_cfg = cfg.semantic_dedup
        if threshold is not None:
            dedup_cfg = dedup_cfg.model_copy(update={"threshold": threshold})
        cfg = cfg.model_copy(update={"semantic_dedup": dedup_cfg, "workspace": ws.uri})
        with console.status(f"semantic dedup at cosine >= {dedup_cfg.threshold}"):
            if runner != "local" or workers or runner_address:
                from flows.clean import dedup_flow

                result = dedup_flow(cfg, runner, runner_address, workers)["semantic_dedup"]
            else:
                from pipeline.embed import embed_pairs
                from pipeline.semantic_dedup_stage import SemanticDedupStage, run_semantic_dedup

                embed_pairs(ws, cfg.embed, "conversation")
                result = run_semantic_dedup(ws, SemanticDedupStage(cfg.embed, dedup_cfg, cfg.index,
                                                                   cell_rows=dedup_cfg.cell_rows))
        console.print(table(
            "semantic dedup",
            ["pairs", "groups", "dropped", "threshold", "search", "tasks", "seconds"],
            [[result["considered"], result["groups"], result["dropped"], result["threshold"],
              result["search"], result["tasks"], f"{result['seconds']:.1f}"]],
        ))


@friendly_errors
def neighbors(
    pair_id: Annotated[str, typer.Argument(help="The pair to look around (a prefix is enough).")],
    k: Annotated[int, typer.Option("-k", help="How many neighbours.")] = 8,
    view: Annotated[str, typer.Option(help="conversation | conversation+attributes")] = "conversation",
    width: Annotated[int, typer.Option(help="Characters shown of each text.")] = 160,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Show a pair and its k nearest pairs: similarity, prompt, chosen and rejected (truncated)."""
    from rich.table import Table

    from pipeline.embed import embed_pairs, embeddings_table, load_embeddings
    from pipeline.index import workspace_index
    from pipeline.pool import DroppedLookup
    from schemas.pair import PairRecord

    cfg = load_config(config)
    ws = open_workspace(cfg, workspace, needs=["pool"])
    import polars as pl

    matches = ws.scan("pool").filter(pl.col("pair_id").str.starts_with(pair_id)).select("pair_id") \
        .unique().collect()["pair_id"].to_list()
    if not matches:
        raise UserError(f"no pair with id {pair_id!r} in {ws.uri}")
    if len(matches) > 1:
        raise UserError(f"{pair_id!r} matches {len(matches)} pairs; give more characters")
    query = matches[0]
    embed_pairs(ws, cfg.embed, view)  # the active pool, one partition at a time (no id list of it)
    _, vector = load_embeddings(ws, cfg.embed, view, pair_ids=[query])
    if not len(vector):  # a pair that cleaning dropped before it was embedded
        embed_pairs(ws, cfg.embed, view, pair_ids=[query])
        _, vector = load_embeddings(ws, cfg.embed, view, pair_ids=[query])
    index = workspace_index(ws, embeddings_table(cfg.embed.model, view), cfg.index)
    hits = index.search(vector, k, query_ids=[query])[0]
    wanted = [query, *[pid for pid, _ in hits]]
    rows = ws.scan("pool").filter(pl.col("pair_id").is_in(wanted)).unique("pair_id").collect()
    records = {r["pair_id"]: PairRecord.from_row(r) for r in rows.iter_rows(named=True)}
    dropped = set(DroppedLookup.open(ws).gone(pl.Series("pair_id", wanted, pl.Utf8))["pair_id"].to_list())

    def cut(text: str) -> str:
        """One line of at most `width` characters, escaped: pair text is never read as rich markup."""
        flat = " ".join(text.split())
        return escape(flat if len(flat) <= width else flat[: width - 1] + "…")

    def prompt_of(record: PairRecord) -> str:
        return cut(record.conversation[-1].content)

    q = records[query]
    console.print(f"[bold]{query}[/]  {escape(q.source)}  label: {q.label_source.value}")
    console.print(f"[bold]prompt[/]   {prompt_of(q)}")
    console.print(f"[green]chosen[/]   {cut(q.chosen)}")
    console.print(f"[red]rejected[/] {cut(q.rejected)}")
    out = Table(title=f"{len(hits)} nearest pairs ({view} view, index {index.kind})", title_justify="left",
                show_lines=True)
    out.add_column("#", justify="right")
    out.add_column("cosine", justify="right")
    out.add_column("pair")
    out.add_column("prompt / chosen / rejected", ratio=1)
    for rank, (pid, sim) in enumerate(hits, start=1):
        r = records[pid]
        note = " [yellow](dropped)[/]" if pid in dropped else ""
        out.add_row(
            str(rank), f"{sim:.4f}", f"{pid[:12]}\n{escape(r.source)}{note}",
            f"{prompt_of(r)}\n[green]+ {cut(r.chosen)}[/]\n[red]- {cut(r.rejected)}[/]",
        )
    console.print(out)
