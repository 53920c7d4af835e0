"""`synpref ingest | clean | compact | status | export`: thin commands over pipeline.ingest/clean/
pool_compact/export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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

if TYPE_CHECKING:
    from flows.export import ExportKind, ExportResult
    from pipeline.store import Workspace
    from schemas.config import SynprefConfig

FormatOpt = Annotated[str, typer.Option("--format", "-f", help="Source format, or auto to detect it: auto, "
                                        "hh-rlhf, sharegpt, prompt-chosen-rejected, llmbar, pandalm, "
                                        "offsetbias, generic.")]
ColumnMapOpt = Annotated[list[str] | None, typer.Option(
    "--column-map", help="generic format: FIELD=COLUMN (fields: prompt, conversation, chosen, rejected, "
    "system); repeat it, or pass one JSON object.")]


def parse_column_map(items: list[str] | None) -> dict[str, str]:
    """`["prompt=question", "chosen=good"]` or `['{"prompt": "question"}']` as a dict."""
    out: dict[str, str] = {}
    for item in items or []:
        if item.lstrip().startswith("{"):
            try:
                out.update({str(k): str(v) for k, v in json.loads(item).items()})
            except (json.JSONDecodeError, AttributeError) as exc:
                raise UserError(f"--column-map: not a JSON object: {item}") from exc
            continue
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise UserError(f"--column-map: expected FIELD=COLUMN, got {item!r}")
        out[field.strip()] = column.strip()
    return out


def _ingest_on_runner(ws_uri: str, specs: list[Any], runner: str, workers: int | None,
                      address: str | None) -> list[Any]:
    """The sources through the ingest flow, their files staged on `runner`; IngestStats per source."""
    from flows.ingest import ingest_sources_flow
    from flows.runners import make_task_runner
    from pipeline.ingest import IngestStats
    from schemas.config.sources import SourceConfig

    sources = [SourceConfig(path=s.path, format=s.format, name=s.name, license=s.license,
                            label_source=s.label_source, column_map=s.column_map or {}, split=s.split,
                            limit=s.limit, **({"images": s.images} if s.images is not None else {}))
               for s in specs]
    flow = ingest_sources_flow.with_options(task_runner=make_task_runner(runner, address=address,
                                                                         workers=workers))
    fields = set(IngestStats.__dataclass_fields__)
    return [IngestStats(**{k: v for k, v in r.items() if k in fields}) for r in flow(ws_uri, sources)]


def register(app: typer.Typer) -> None:
    """Add ingest, clean, status and export to the synpref app."""

    @app.command("ingest")
    @friendly_errors
    def ingest(
        paths: Annotated[list[str] | None, typer.Argument(
            help="Files, folders, globs or hub ids (org/name). Default: the config's sources.")] = None,
        format: FormatOpt = "auto",
        name: Annotated[str | None, typer.Option("--name", help="Source name stored on each pair.")] = None,
        license: Annotated[str, typer.Option("--license", help="License stored on each pair.")] = "",
        label_source: Annotated[str | None, typer.Option(
            "--label-source", help="human | ai | unknown (default: what the format implies).")] = None,
        column_map: ColumnMapOpt = None,
        split: Annotated[str | None, typer.Option("--split", help="Hub datasets: the split.")] = None,
        limit: Annotated[int | None, typer.Option("--limit", help="Read at most this many rows.")] = None,
        runner: Annotated[str, runner_opt("the files are staged")] = "local",
        workers: WorkersOpt = None,
        runner_address: AddressOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Read preference pairs into the workspace pool; bad rows go to quarantine, ties to dropped.

        Re-ingesting a source adds nothing. Formats are detected when unambiguous. With --runner or
        --workers every file is staged by a task on Prefect's task runner of that name, and the
        sources are committed in order: the pool is the same as without.
        """
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from flows.runners import RUNNERS
        from pipeline.ingest import IngestStats, ingest_source
        from pipeline.sources import SourceSpec

        if runner not in RUNNERS:
            raise UserError(f"--runner: choose one of {', '.join(RUNNERS)}")
        cfg = load_config(config)
        mapping = parse_column_map(column_map)
        if paths:
            specs = [SourceSpec(p, format, name if len(paths) == 1 else None, license, label_source,
                                mapping or None, split, limit) for p in paths]
        elif cfg.sources:
            from pipeline.ingest import source_spec

            specs = [source_spec(s) for s in cfg.sources]
        else:
            raise UserError("nothing to ingest: pass paths, or list sources in synpref.toml")
        ws = open_workspace(cfg, workspace, write=True)
        results: list[IngestStats] = []
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[rows]} rows"),
                   TimeElapsedColumn())
        if runner != "local" or workers or runner_address:
            results = _ingest_on_runner(ws.uri, specs, runner, workers, runner_address)
            specs = []
        with Progress(*columns, console=console, transient=True) as progress:
            for spec in specs:
                task = progress.add_task(f"ingest {spec.source_name()}", total=None, rows=0)
                stats = ingest_source(ws, spec, progress=lambda n, t=task: progress.update(t, rows=n))
                progress.remove_task(task)
                results.append(stats)
        console.print(table(
            f"Ingested into {ws.uri}",
            ["source", "format", "rows", "added", "already in pool", "duplicates", "quarantined",
             "ties/undecided", "pairs/s"],
            [[escape(s.source), s.format, s.rows_read, s.added, s.already_present, s.duplicates,
              s.quarantined, s.dropped, round(s.pairs_per_s)] for s in results],
        ))

    @app.command("clean")
    @friendly_errors
    def clean(
        benchmark: Annotated[list[str] | None, typer.Option(
            "--benchmark", "-b", help="Benchmark file (any supported format) whose first user turns "
            "the pool is decontaminated against; repeat it. Default: the config's clean.benchmarks.")
        ] = None,
        ngram: Annotated[int | None, typer.Option("--ngram", help="Words per n-gram (default 13).")] = None,
        runner: Annotated[str, runner_opt("the partition tasks")] = "local",
        workers: WorkersOpt = None,
        runner_address: AddressOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Exact dedup of the pool (case/whitespace-insensitive) and n-gram benchmark decontamination.

        Removed pairs are recorded in `dropped` with their reason; re-running finds nothing new.
        With --runner or --workers the partition tasks run on Prefect's task runner of that name.
        """
        from flows.runners import RUNNERS
        from pipeline.clean import decontaminate, exact_dedup

        if runner not in RUNNERS:
            raise UserError(f"--runner: choose one of {', '.join(RUNNERS)}")
        cfg = load_config(config)
        ws = open_workspace(cfg, workspace, write=True, needs=["pool"])
        benchmarks = list(benchmark or cfg.clean.benchmarks)
        for path in benchmarks:
            if not Path(path).exists():
                raise UserError(f"benchmark file not found: {path}")
        if runner != "local" or workers or runner_address:
            rows = _clean_on_runner(ws.uri, benchmarks, ngram or cfg.clean.ngram, runner, workers,
                                    runner_address)
            console.print(table("Cleaned", ["stage", "examined", "dropped", "pairs/s", "tasks", "processes"],
                                rows))
            return
        with _bar() as progress:
            task = progress.add_task("exact dedup", total=None)
            results = [exact_dedup(ws, progress=_updater(progress, task))]
            if benchmarks:
                task = progress.add_task(f"decontamination against {len(benchmarks)} benchmark file(s)",
                                         total=None)
                results.append(decontaminate(ws, benchmarks, n=ngram or cfg.clean.ngram,
                                             progress=_updater(progress, task)))
        console.print(table("Cleaned", ["stage", "examined", "dropped", "pairs/s"],
                            [[r.stage, r.examined, r.dropped, round(r.pairs_per_s)] for r in results]))

    @app.command("compact")
    @friendly_errors
    def compact(config: ConfigOpt = None, workspace: WorkspaceOpt = None) -> None:
        """Cluster the pool's parts of small ingests by pair_id, as a big ingest writes them: each
        new part holds one range of ids, so scoring and judging shards read only their own slice.
        Every row and number is kept. Takes the run lease: run it between rounds."""
        from pipeline.pool_compact import compact_pool

        cfg = load_config(config)
        ws = open_workspace(cfg, workspace, write=True, needs=["pool"])
        stats = compact_pool(ws)
        columns = ["loose parts", "rows", "parts written", "committed", "key index kept"]
        console.print(table("Compacted", columns, [[stats.loose_parts, stats.rows, stats.parts_written,
                                                     stats.committed, stats.index_kept]]))
        if stats.reason:
            console.print(escape(stats.reason))

    @app.command("status")
    @friendly_errors
    def status(config: ConfigOpt = None, workspace: WorkspaceOpt = None) -> None:
        """Show the workspace: tables and row counts, pairs per source and label source, quarantine
        reasons, dropped pairs per stage and reason."""
        from pipeline.lease import read_holder

        cfg = load_config(config)
        ws = open_workspace(cfg, workspace)
        for title, columns, rows in status_tables(ws):
            console.print(table(escape(title), columns, [[_cell(v) for v in r] for r in rows]))
        holder = read_holder(ws)
        if holder is not None:
            console.print(f"in use by a writing run: {escape(holder.describe())}")

    @app.command("export")
    @friendly_errors
    def export(
        out: Annotated[str | None, typer.Option(
            "--out", "-o", help="Also write shards + README.md to this folder or fsspec URI (s3://, gs://, "
            "memory://, ...).")] = None,
        pool: Annotated[bool, typer.Option(
            "--pool", help="Export the raw active pool with its source labels instead of the loop's "
            "curation (to --out only: the workspace's `curated` table keeps the curation).")] = False,
        push_to_hub: Annotated[str | None, typer.Option(
            "--push-to-hub", metavar="ORG/NAME", help="Also push the export with its dataset card to the "
            "Hugging Face Hub (token from $HF_TOKEN).")] = None,
        private: Annotated[bool, typer.Option("--private", help="--push-to-hub: a private dataset.")] = False,
        runner: Annotated[str, runner_opt("the export tasks")] = "local",
        workers: WorkersOpt = None,
        runner_address: AddressOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Export the loop's curated selection (gold, silver, stage-2 keeps and flips) as Parquet shards
        with TRL prompt/chosen/rejected message columns and a dataset card; `--pool` exports the raw
        active pool instead. `datasets.load_dataset("parquet", ...)` reads either as-is.

        The export is map, reduce and write tasks (pool partitions, pair_id buckets, shards): in
        this process one after another, or with --runner / --workers on Prefect's task runner of
        that name, to the same files."""
        from flows import export as exporting
        from flows.runners import RUNNERS

        if runner not in RUNNERS:
            raise UserError(f"--runner: choose one of {', '.join(RUNNERS)}")
        cfg = load_config(config)
        ws = open_workspace(cfg, workspace, write=True, needs=["pool"])
        kind: exporting.ExportKind = "pool" if pool else "curation"
        if runner != "local" or workers or runner_address:
            from flows.cli.curate import _quiet_prefect

            _quiet_prefect()
            with console.status(f"exporting the {'raw active pool' if pool else 'curation'} on {runner}"):
                result = exporting.export_on_runner(
                    ws, kind, out, shard_rows=cfg.export.shard_rows,
                    include_flipped=cfg.export.include_flipped, runner=runner,
                    runner_address=runner_address, workers=workers)
        else:
            result = _export_here(ws, kind, out, cfg)
        console.print(table("Exported pairs per source", ["source", "pairs"],
                            [[escape(k), v] for k, v in result.counts["source"].items()]))
        where = ", ".join(escape(w) for w in (result.table, result.out_dir) if w)
        console.print(f"{result.describe()} in {result.shards} shard(s) -> {where}")
        if push_to_hub:
            exporting.push_to_hub(ws, result, push_to_hub, private=private)
            console.print(f"pushed to the Hugging Face Hub: {escape(push_to_hub)}"
                          f"{' (private)' if private else ''}")


def _export_here(ws: Workspace, kind: ExportKind, out: str | None, cfg: SynprefConfig) -> ExportResult:
    """The export's tasks in this process, one after another, with a progress bar."""
    from flows import export as exporting

    with _bar() as progress:
        what = "raw active pool" if kind == "pool" else "curation"
        task = progress.add_task(f"exporting the {what}", total=None)

        def step(what: str, done: int, total: int) -> None:
            progress.update(task, description=what, completed=done, total=total)

        return exporting.export_workspace(ws, kind, out, shard_rows=cfg.export.shard_rows,
                                          include_flipped=cfg.export.include_flipped, progress=step)


def _clean_on_runner(ws_uri: str, benchmarks: list[str], ngram: int, runner: str, workers: int | None,
                     address: str | None) -> list[list[Any]]:
    """Exact dedup and decontamination as stage tasks on a Prefect task runner; a table row each."""
    from flows.cli.curate import _quiet_prefect

    _quiet_prefect()
    from flows.runners import make_task_runner
    from flows.stages import stages_flow
    from pipeline.clean import Decontamination, ExactDedup
    from pipeline.stage import ROWS_PER_PARTITION

    steps: list[Any] = [ExactDedup()]
    if benchmarks:
        steps.append(Decontamination(benchmarks, ngram))
    task_runner = make_task_runner(runner, address=address, workers=workers)
    ran = stages_flow.with_options(task_runner=task_runner)(ws_uri, steps, ROWS_PER_PARTITION)
    return [[name, r["examined"], r["dropped"], round(r["pairs_per_s"]), r["tasks"], len(r["pids"])]
            for name, r in ran.items()]


def _bar() -> Any:
    """A rich progress display with a bar, pairs done of all, elapsed and remaining time."""
    from flows.progress import progress_bar

    return progress_bar(console, unit="pairs")


def _updater(progress: Any, task: Any) -> Any:
    """A (done, total) callback that moves `task` of `progress`."""

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update


def _cell(value: Any) -> Any:
    return escape(value) if isinstance(value, str) else value


def status_tables(ws: Any) -> list[tuple[str, list[str], list[list[Any]]]]:
    """The rows `synpref status` prints, as plain data."""
    import polars as pl

    from pipeline.pool import cleaned_out

    out: list[tuple[str, list[str], list[list[Any]]]] = []
    names = ws.tables()
    out.append((f"Workspace {ws.uri}", ["table", "rows", "shards"],
                [[t, ws.row_count(t), len(ws.manifest(t)["shards"])] for t in names]))
    if "pool" in names:
        # counted as the tables stream by: a pair is active unless cleaning dropped it (as
        # `active_pool`), told by a join, not by a list of the pool's ids
        gone = cleaned_out(ws)
        pool = ws.scan("pool").select("pair_id", "source", "label_source")
        counts = (
            (pool.with_columns(gone=pl.lit(None, pl.Boolean)) if gone is None else
             pool.join(gone.with_columns(gone=pl.lit(True)), on="pair_id", how="left"))
            .group_by("source", "label_source")
            .agg(pl.len().alias("pairs"), pl.col("gone").is_null().sum().alias("active"))
            .sort("source", "label_source")
            .collect(engine="streaming")
        )
        out.append(("Pairs per source and label source", ["source", "label_source", "pairs", "active"],
                    [list(r) for r in counts.iter_rows()]))
    if "quarantine" in names and ws.row_count("quarantine"):
        reasons = (ws.scan("quarantine").group_by("source", "field", "reason").len()
                   .sort("len", descending=True).collect())
        out.append(("Quarantine reasons", ["source", "field", "reason", "rows"],
                    [list(r) for r in reasons.iter_rows()]))
    if "dropped" in names and ws.row_count("dropped"):
        dropped = ws.scan("dropped").group_by("stage", "reason").len().sort("stage", "reason").collect()
        out.append(("Dropped pairs", ["stage", "reason", "pairs"], [list(r) for r in dropped.iter_rows()]))
    return out
