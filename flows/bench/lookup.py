"""`synpref bench lookup`: what a shard of ids costs to look up in the pool, clustered or not.

Scoring and judging shards are cut from sorted id lists and each looks its pairs up in the pool
(pipeline/pool.py `pool_rows`). The same generated pool is ingested twice, clustered by pair_id
(the default from `ingest_parts.CLUSTER_ROWS` new pairs), as a part per staged batch, and as a
part per batch then compacted (`synpref compact`), and the same shards are looked up in each:
seconds, parts opened and bytes read (the process's `rchar`) per shard.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer


def _read_bytes() -> int:
    """Bytes this process has read through system calls so far (Linux `rchar`)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _lookups(ws: Any, shards: list[list[str]]) -> dict[str, float]:
    from pipeline.pool import load_records, parts_holding

    parts = ws.manifest("pool")["shards"]
    seconds, opened, read = [], [], []
    for shard in shards:
        before, started = _read_bytes(), time.perf_counter()
        records = load_records(ws, shard)
        seconds.append(time.perf_counter() - started)
        read.append(_read_bytes() - before)
        opened.append(len(parts_holding(parts, sorted(shard))))
        assert len(records) == len(shard)
    n = len(shards)
    return {"parts": len(parts), "s": sum(seconds) / n, "opened": sum(opened) / n,
            "mb": sum(read) / n / 2**20}


def register(bench_app: typer.Typer) -> None:
    """Add `synpref bench lookup`."""

    @bench_app.command("lookup")
    def bench_lookup(
        pairs: Annotated[int, typer.Option("--pairs", help="Pairs in the generated pool.")] = 1_000_000,
        ids: Annotated[int, typer.Option("--ids", help="Ids in the list the shards are cut from.")] = 100_000,
        shard: Annotated[int, typer.Option("--shard", help="Ids per shard.")] = 500,
        shards: Annotated[int, typer.Option("--shards", help="Shards looked up (spread over the list).")] = 8,
        data_dir: Annotated[Path | None, typer.Option(
            "--data-dir", help="Where the generated pool is kept and reused (default: a temp folder).")
        ] = None,
    ) -> None:
        """Seconds, parts opened and MB read per shard of sorted ids, clustered pool against not."""
        import polars as pl

        from flows.bench.ingest_data import generate
        from flows.bench.machine import machine_info
        from flows.cli.common import console, table
        from pipeline import ingest_parts
        from pipeline.ingest import ingest_source
        from pipeline.pool_compact import compact_pool
        from pipeline.sources import SourceSpec
        from pipeline.store import Workspace

        console.print(machine_info())
        tmp = Path(tempfile.mkdtemp(prefix="synpref-bench-"))
        pool, _ = generate(data_dir or tmp, pairs)
        rows, cut = [], None
        default = ingest_parts.CLUSTER_ROWS
        try:
            for layout, threshold in (("clustered", default), ("a part per batch", 10**12),
                                      ("a part per batch, compacted", 10**12)):
                ingest_parts.CLUSTER_ROWS = threshold
                ws = Workspace(tmp / layout.replace(" ", "-").replace(",", ""))
                started = time.perf_counter()
                ingest_source(ws, SourceSpec(str(pool), name="bench"))
                took = time.perf_counter() - started
                compacted = 0.0
                if layout.endswith("compacted"):
                    started = time.perf_counter()
                    compact_pool(ws)
                    compacted = time.perf_counter() - started
                if cut is None:  # the same shards for both layouts
                    every = pl.from_arrow(ws.read("pool", columns=["pair_id"]))["pair_id"].to_list()
                    listed = sorted(random.Random(0).sample(every, min(ids, len(every))))
                    cuts = [listed[i:i + shard] for i in range(0, len(listed), shard)]
                    picks = range(min(shards, len(cuts)))
                    cut = [cuts[round(i * (len(cuts) - 1) / max(1, shards - 1))] for i in picks]
                found = _lookups(ws, cut)
                rows.append([layout, round(took, 1), round(compacted, 1), found["parts"],
                             round(found["s"], 3),
                             round(found["opened"], 1), round(found["mb"], 1)])
        finally:
            ingest_parts.CLUSTER_ROWS = default
            shutil.rmtree(tmp, ignore_errors=True)
        columns = ["layout", "ingest s", "compact s", "pool parts", "s per shard", "parts opened",
                   "MB read per shard"]
        console.print(table(f"{pairs} pairs; shards of {shard} ids cut from {ids} sorted ids", columns, rows))
        for row in rows:  # unabridged, for logs narrower than the table
            console.print("  ".join(f"{c}={v}" for c, v in zip(columns, row, strict=True)), soft_wrap=True)
