"""`synpref bench ingest`: ingest + normalize + exact dedup + decontamination on a generated pool.

Prints pairs/s per step and peak RSS for synpref's column-wise path and for the naive way
(pandas, row-wise Python, 13-gram tuple sets), each run in its own process, side by side.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.bench.machine import in_child


def _synpref_run(pool: str, bench: str, workspace: str, queue: Any) -> None:
    from flows.bench.machine import peak_rss_mb
    from pipeline.clean import decontaminate, exact_dedup
    from pipeline.ingest import ingest_source
    from pipeline.sources import SourceSpec
    from pipeline.store import Workspace

    ws = Workspace(workspace)
    ingest = ingest_source(ws, SourceSpec(pool, name="bench"))
    dedup = exact_dedup(ws)
    decon = decontaminate(ws, [bench])
    done = {"ingest": ingest, "exact dedup": dedup, "decontamination": decon}
    queue.put({
        "steps": {k: v.seconds for k, v in done.items()},
        "cpu": {k: v.cpu_seconds for k, v in done.items()},
        "kept": ingest.added - dedup.dropped - decon.dropped,
        "pairs": ingest.rows_read,
        "peak_rss_mb": peak_rss_mb(),
        "counts": {"rows": ingest.rows_read, "added": ingest.added, "duplicates at ingest": ingest.duplicates,
                   "quarantined": ingest.quarantined, "exact dedup": dedup.dropped,
                   "contaminated": decon.dropped},
    })


def _naive_run(pool: str, bench: str, limit: int | None, queue: Any) -> None:
    from flows.bench.ingest_data import naive_run
    from flows.bench.machine import peak_rss_mb

    result = naive_run(Path(pool), Path(bench), limit=limit)
    queue.put({**result, "peak_rss_mb": peak_rss_mb()})


def _row(step: str, ours: dict[str, Any], theirs: dict[str, Any] | None) -> list[Any]:
    """Seconds and pairs/s per side; the ratios compare throughput (the sides may read different counts)."""

    def pick(side: dict[str, Any], key: str) -> float:
        return sum(side[key].values()) if step == "total" else side[key][step]

    wall, cpu = pick(ours, "steps"), pick(ours, "cpu")
    rate, cpu_rate = ours["pairs"] / wall, ours["pairs"] / cpu
    row: list[Any] = [step, round(wall, 2), round(cpu, 2), round(rate)]
    if theirs is not None:
        base_wall, base_cpu = pick(theirs, "steps"), pick(theirs, "cpu")
        base_rate, base_cpu_rate = theirs["pairs"] / base_wall, theirs["pairs"] / base_cpu
        row += [round(base_wall, 2), round(base_cpu, 2), round(base_rate),
                f"{rate / base_rate:.1f}x", f"{cpu_rate / base_cpu_rate:.1f}x"]
    return row


def register(bench_app: typer.Typer) -> None:
    """Add `synpref bench ingest`."""

    @bench_app.command("ingest")
    def bench_ingest(
        pairs: Annotated[int, typer.Option("--pairs", help="Pairs in the generated pool.")] = 200_000,
        data_dir: Annotated[Path | None, typer.Option(
            "--data-dir", help="Where the generated pool is kept and reused (default: a temp folder).")
        ] = None,
        naive: Annotated[bool, typer.Option("--naive/--no-naive", help="Also run the naive way.")] = True,
        naive_pairs: Annotated[int | None, typer.Option(
            "--naive-pairs", help="Run the naive way on only the first N pairs (it needs ~6 GB per 1M).")
        ] = None,
    ) -> None:
        """Ingest + normalize + exact dedup + 13-gram decontamination on a generated pool: pairs/s per
        step and peak RSS, next to the naive way (pandas + pure-Python n-gram sets) as a ratio."""
        from flows.bench.ingest_data import generate
        from flows.bench.machine import machine_info
        from flows.cli.common import console, table

        console.print(machine_info())
        tmp = Path(tempfile.mkdtemp(prefix="synpref-bench-"))
        folder = data_dir or tmp
        try:
            started = time.perf_counter()
            pool, bench = generate(folder, pairs)
            size_mb = pool.stat().st_size / 2**20
            took = time.perf_counter() - started
            console.print(f"pool: {pairs} pairs, {size_mb:.0f} MB of JSONL ({took:.1f} s to generate)")
            ours = in_child(_synpref_run, str(pool), str(bench), str(tmp / "workspace"))
            theirs = in_child(_naive_run, str(pool), str(bench), naive_pairs) if naive else None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows = [_row(step, ours, theirs) for step in [*ours["steps"], "total"]]
        columns = ["step", "synpref s", "cpu s", "pairs/s"]
        if theirs is not None:
            columns += ["naive s", "cpu s", "pairs/s", "speed-up", "cpu ratio"]
        title = f"{pairs} pairs, {size_mb:.0f} MB"
        if theirs is not None and theirs["pairs"] != pairs:
            title += f" (naive way on the first {theirs['pairs']})"
        console.print(table(title, columns, rows))
        for row in rows:  # the same figures unabridged, for logs narrower than the table
            console.print("  ".join(f"{c}={v}" for c, v in zip(columns, row, strict=True)), soft_wrap=True)
        rss = f"peak RSS: synpref {ours['peak_rss_mb']:.0f} MB"
        if theirs is not None:
            rss += (f", naive {theirs['peak_rss_mb']:.0f} MB; pairs kept: synpref {ours['kept']}, "
                    f"naive {theirs['kept']}")
        console.print(rss)
        console.print(ours["counts"])
