"""`synpref bench scale`: generated pools through ingest, exact dedup, decontamination and export.

Each size runs in a fresh process (the flow process: its peak RSS is its own). Ingest runs as the
ingest flow (flows/ingest.py: a staging task per file, commits in order), exact dedup,
decontamination and export as stage contracts (flows/stages.py, pipeline/export_stage.py), all on
the chosen task runner, so with `--runner dask` their tasks run in worker processes and report
their own peak RSS in their receipts. `--ingest-files N` splits the generated pool into N files
(N sources, in line order) so that the ingest has N tasks to spread (a file bigger than
`--split-mb` is staged in byte ranges, a task each); `--ingest-in-process` reads
the sources in the flow process instead, one after another (`synpref ingest` without a runner).
Prints the machine, then per stage: seconds, pairs/s, the flow process's peak RSS during the stage
(its high-water mark is reset before each stage where Linux allows it, so the figure is the
stage's own), the largest peak RSS of a process that ran its tasks (a worker's since it
started), and how many cores the whole machine kept busy during the stage (every process: the
flow, the workers, Prefect's server; on a shared machine, other work too): with the same CPU
work, N workers can beat one by no more than the ratio of those figures.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.bench.machine import in_child


def _reset_peak() -> None:
    """Start this process's high-water mark of resident memory afresh (Linux: VmHWM, which
    ru_maxrss reads), so each stage's flow peak RSS is its own, not the largest so far."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def split_pool(pool: Path, files: int) -> list[Path]:
    """The generated pool as `files` JSONL files of consecutive lines (made once, then reused)."""
    if files <= 1:
        return [pool]
    folder = pool.with_name(f"{pool.stem}-in-{files}")
    paths = [folder / f"part-{i:04d}.jsonl" for i in range(files)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    with open(pool, "rb") as fh:
        lines = sum(1 for _ in fh)
    per = -(-lines // files)
    with open(pool, "rb") as fh:
        for path in paths:
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                for _ in range(per):
                    line = fh.readline()
                    if not line:
                        break
                    out.write(line)
            tmp.replace(path)
    return paths


def _ingest(ws_uri: str, pools: list[str], task_runner: Any, in_process: bool, split_bytes: int
            ) -> dict[str, Any]:
    """The pool files as sources `bench` (one file) or `bench/<i>`: the ingest flow's figures."""
    from flows.bench.machine import peak_rss_mb
    from flows.ingest import ingest_sources_flow
    from pipeline.ingest import ingest_source
    from pipeline.store import Workspace
    from schemas.config.sources import SourceConfig

    sources = [SourceConfig(path=p, name="bench" if len(pools) == 1 else f"bench/{i:04d}",
                            split_bytes=split_bytes) for i, p in enumerate(pools)]
    _reset_peak()
    if in_process:
        ws = Workspace(ws_uri)
        stats, took, cores = _clocked(lambda: [ingest_source(ws, s).as_dict() for s in sources])
        task_rss = None
    else:
        stats, took, cores = _clocked(lambda: ingest_sources_flow.with_options(task_runner=task_runner)(
            ws_uri, sources))
        task_rss = max(float(s["task_peak_rss_mb"]) for s in stats)
    return {"stage": "ingest", "seconds": took, "pairs": sum(int(s["rows_read"]) for s in stats),
            "cores": cores,
            "task_seconds": took if in_process else sum(float(s["task_seconds"]) for s in stats),
            "flow_rss_mb": peak_rss_mb(), "task_rss_mb": task_rss,
            "tasks": sum(int(s.get("tasks", 1)) for s in stats),
            "dropped": sum(int(s["duplicates"]) for s in stats), "phases": _summed_phases(stats)}


def _clocked(call: Callable[[], Any]) -> tuple[Any, float, float]:
    """`call()`, its wall seconds, and the cores the whole machine kept busy meanwhile."""
    from flows.bench.machine import busy_cpu_seconds

    start, busy = time.perf_counter(), busy_cpu_seconds()
    result = call()
    took = time.perf_counter() - start
    return result, took, (busy_cpu_seconds() - busy) / max(took, 1e-9)


def _summed_phases(stats: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds of each commit step (pipeline.ingest_pool.IngestStats.phases) over every source."""
    out: dict[str, float] = {}
    for source in stats:
        for phase, seconds in source.get("phases", {}).items():
            out[phase] = round(out.get(phase, 0.0) + float(seconds), 2)
    return out


def _scale_run(pools: list[str], bench: str, workspace: str, runner: str, workers: int,
               rows_per_partition: int, ingest_in_process: bool, ingest_only: bool, split_bytes: int,
               queue: Any) -> None:
    # before Prefect is imported: no telemetry writes racing the temporary server's SQLite, and
    # no log line per task
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows.bench.machine import peak_rss_mb
    from flows.runners import dask_cluster_kwargs, make_task_runner
    from flows.stages import export_pool_flow, stages_flow
    from pipeline.clean import Decontamination, ExactDedup
    from pipeline.store import Workspace

    ws = Workspace(workspace)
    rows: list[dict[str, Any]] = []
    steps = [ExactDedup(), Decontamination([bench])]
    cluster = None
    if runner == "dask":  # one cluster for every stage: its start-up is not a stage's time
        from distributed import Client, LocalCluster

        cluster = LocalCluster(**dask_cluster_kwargs(workers))
        with Client(cluster) as client:  # workers import the stages before any stage is timed
            for module in ("pipeline.ingest", "pipeline.clean", "pipeline.export_stage"):
                client.run(importlib.import_module, module)
    address = cluster.scheduler_address if cluster is not None else None
    task_runner = make_task_runner(runner, address=address, workers=workers)
    flow = stages_flow.with_options(task_runner=task_runner)
    flow(ws.uri, [], rows_per_partition)  # Prefect's temporary server starts here, not in a stage
    rows.append(_ingest(ws.uri, pools, task_runner, ingest_in_process, split_bytes))
    for step in [] if ingest_only else steps:  # one flow run per stage, to time each on its own
        _reset_peak()
        result, took, cores = _clocked(partial(flow, ws.uri, [step], rows_per_partition))
        stats = result[step.name]
        rows.append({"stage": step.name, "seconds": took, "pairs": stats["examined"], "cores": cores,
                     "flow_rss_mb": peak_rss_mb(), "task_rss_mb": stats["task_peak_rss_mb"],
                     "tasks": stats["tasks"], "dropped": stats["dropped"],
                     "task_seconds": stats["task_seconds"]})
    if ingest_only:
        if cluster is not None:
            cluster.close()
        queue.put(rows)
        return
    _reset_peak()
    export_flow = export_pool_flow.with_options(task_runner=task_runner)
    export, took, cores = _clocked(lambda: export_flow(ws.uri, rows_per_partition=rows_per_partition))
    rows.append({"stage": "export", "seconds": took, "pairs": export["rows"], "cores": cores,
                 "task_seconds": export["task_seconds"], "flow_rss_mb": peak_rss_mb(),
                 "task_rss_mb": export["task_peak_rss_mb"], "tasks": export["tasks"], "dropped": 0})
    if cluster is not None:
        cluster.close()
    queue.put(rows)


def register(bench_app: typer.Typer) -> None:
    """Add `synpref bench scale`."""

    @bench_app.command("scale")
    def bench_scale(
        pairs: Annotated[list[int] | None, typer.Option(
            "--pairs", help="Pool sizes to run (repeat it). Default: 250000 and 1000000.")] = None,
        runner: Annotated[str, typer.Option("--runner", help="local | dask | ray.")] = "local",
        workers: Annotated[int, typer.Option("--workers", help="Threads or worker processes.")] = 2,
        rows_per_partition: Annotated[int, typer.Option(
            "--rows-per-partition", help="Pool rows per partition task.")] = 100_000,
        data_dir: Annotated[Path | None, typer.Option(
            "--data-dir", help="Where generated pools are kept and reused (default: a temp folder).")
        ] = None,
        ingest_files: Annotated[int, typer.Option(
            "--ingest-files", help="Split the generated pool into this many files (sources), one "
            "ingest task each.")] = 1,
        ingest_in_process: Annotated[bool, typer.Option(
            "--ingest-in-process", help="Ingest in the flow process, source after source, not as tasks "
            "on the runner.")] = False,
        ingest_only: Annotated[bool, typer.Option(
            "--ingest-only", help="Run the ingest only, not the stages after it.")] = False,
        split_mb: Annotated[int, typer.Option(
            "--split-mb", help="Stage files bigger than this (MiB) in byte ranges of about this size, "
            "a task each (the sources' split_bytes).")] = 256,
    ) -> None:
        """Ingest, exact dedup, decontamination and export of generated pools: pairs/s per stage and
        peak RSS of the flow process and of the processes that ran the stage tasks."""
        from flows.bench.ingest_data import generate
        from flows.bench.machine import machine_info
        from flows.cli.common import console, table

        console.print(machine_info())
        console.print(f"runner={runner} workers={workers} rows_per_partition={rows_per_partition} "
                      f"ingest_files={ingest_files} split_mb={split_mb} "
                      f"ingest_in_process={ingest_in_process} "
                      f"load={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        tmp = Path(tempfile.mkdtemp(prefix="synpref-scale-"))
        folder = data_dir or tmp
        columns = ["stage", "seconds", "pairs/s", "tasks", "pairs per task-s", "dropped", "flow peak RSS MB",
                   "task peak RSS MB", "cores busy"]
        try:
            for size in pairs or [250_000, 1_000_000]:
                pool, bench = generate(folder, size)
                workspace = tmp / f"workspace-{size}"
                pools = [str(p) for p in split_pool(pool, ingest_files)]
                rows = in_child(_scale_run, pools, str(bench), str(workspace), runner, workers,
                                rows_per_partition, ingest_in_process, ingest_only, split_mb << 20)
                shutil.rmtree(workspace, ignore_errors=True)
                out = [[r["stage"], round(r["seconds"], 2), round(r["pairs"] / max(r["seconds"], 1e-9)),
                        r["tasks"], round(r["pairs"] / max(r["task_seconds"], 1e-9)), r["dropped"],
                        round(r["flow_rss_mb"]),
                        "-" if r["task_rss_mb"] is None else round(r["task_rss_mb"]), round(r["cores"], 2)]
                       for r in rows]
                total = sum(r["seconds"] for r in rows)
                cores = sum(r["cores"] * r["seconds"] for r in rows) / max(total, 1e-9)
                out.append(["total", round(total, 2), round(size / total), *[""] * 5, round(cores, 2)])
                console.print(table(f"{size} pairs", columns, out))
                for row in out:  # unabridged, for logs narrower than the table
                    console.print("  ".join(f"{c}={v}" for c, v in zip(columns, row, strict=True)),
                                  soft_wrap=True)
                for r in rows:  # where the ingest's time went after its files were staged
                    if r.get("phases"):
                        console.print(f"{r['stage']} commit steps (s, summed over sources): "
                                      + "  ".join(f"{k}={v}" for k, v in r["phases"].items()), soft_wrap=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
