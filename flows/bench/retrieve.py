"""`synpref bench retrieve`: error-driven retrieval over generated vectors, one FAISS index in one
process (how image pools are still searched) against partition tasks (pipeline/retrieve_stage.py).

The workspace is `synpref bench dedup-stage`'s (N pool pairs, clustered 384-d vectors written
straight to the retrieval view's table, no encoder), and the queries are pairs of it that the RM
gets wrong (p < 0.5, so k = k_max each). Each run happens in a fresh process: wall seconds and the
peak RSS of the process that drove it; the partition tasks' answer is exact, so the one index's
recall@k is measured against it. The one index is built in its run, as a first round builds it
(later rounds load it and add new vectors).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.bench.machine import in_child


def _run(root: str, mode: str, queries: int, k_max: int, rows_per_partition: int, out: str,
         queue: Any) -> None:
    import numpy as np
    import polars as pl

    from flows.bench.machine import peak_rss_mb
    from flows.bench.scale import _reset_peak
    from pipeline.retrieve import _in_one_index, retrieval_k, retrieve
    from pipeline.store import Workspace
    from schemas.config.embed import EmbedConfig, IndexConfig

    ws = Workspace(root)
    ids = ws.scan("pool").select("pair_id").collect()["pair_id"]
    picked = np.random.default_rng(5).choice(ids.len(), queries, replace=False)
    scores = pl.DataFrame({"pair_id": ids.gather(np.sort(picked)), "p": np.full(queries, 0.2)})
    del ids
    _reset_peak()
    start = time.perf_counter()
    stats: dict[str, Any] = {}
    if mode == "one index":
        shutil.rmtree(Path(root) / "indexes", ignore_errors=True)  # built as a first round builds it
        ks = {pid: retrieval_k(0.2, k_max) for pid in scores["pair_id"]}
        found = _in_one_index(ws, EmbedConfig(), ks, list(ks), set(), IndexConfig(), embed=False)
    else:
        found, stats = retrieve(ws, EmbedConfig(), scores, k_max=k_max, embed=False,
                                rows_per_partition=rows_per_partition)
    seconds = time.perf_counter() - start
    found.write_parquet(out)
    queue.put({"seconds": seconds, "rss_mb": peak_rss_mb(), "tasks": stats.get("tasks", 1),
               "found": found.height})


def bench_retrieve(
    vectors: Annotated[list[int] | None, typer.Option(
        "--vectors", help="Pool sizes (repeat it); each pair has a generated 384-d vector. "
        "Default: 250000 and 1000000.")] = None,
    queries: Annotated[int, typer.Option(help="Query pairs (the RM's failures: k = k_max each).")] = 2_000,
    k_max: Annotated[int, typer.Option(help="Neighbours per failing query.")] = 8,
    rows_per_partition: Annotated[int, typer.Option(help="Pool rows per partition task.")] = 100_000,
    data_dir: Annotated[Path, typer.Option(help="Where the generated workspaces are kept.")] = Path(
        "/tmp/synpref-bench-retrieve"),
) -> None:
    """Retrieval around failing pairs: one FAISS index in one process against partition tasks."""
    import polars as pl

    from flows.bench.dedup_stage import build_workspace
    from flows.bench.machine import machine_info
    from flows.cli.common import console, table
    from pipeline.retrieve import VIEW

    console.print("machine: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()))
    rows = []
    for n in vectors or [250_000, 1_000_000]:
        root = str(data_dir / f"ws-{n}")
        start = time.perf_counter()
        build_workspace(root, n, 0, view=VIEW)
        console.print(f"workspace {root}: {n:,} pairs with vectors ({time.perf_counter() - start:.0f}s)")
        answers = {}
        for mode in ("one index", "partition tasks"):
            out = str(data_dir / f"found-{n}-{mode.replace(' ', '-')}.parquet")
            r = in_child(_run, root, mode, queries, k_max, rows_per_partition, out)
            answers[mode] = pl.read_parquet(out).select("query_pair_id", "pair_id")
            rows.append([f"{n:,}", mode, f"{r['seconds']:.1f}", r["tasks"], f"{r['rss_mb']:,.0f}",
                         r["found"]])
            console.print(" | ".join(str(v) for v in rows[-1]))
        exact = answers["partition tasks"]
        shared = answers["one index"].join(exact, on=["query_pair_id", "pair_id"]).height
        recall = shared / max(1, exact.height)
        rows[-2].append(f"{recall:.3f}")
        rows[-1].append("1 (exact)")
    console.print(table(
        f"retrieval of k={k_max} neighbours for {queries:,} failing queries, "
        f"rows_per_partition={rows_per_partition}",
        ["pairs", "search", "wall s", "tasks", "driver peak RSS MB", "hits", "recall vs exact"], rows))


def register(bench_app: typer.Typer) -> None:
    """Add `synpref bench retrieve`."""
    bench_app.command("retrieve")(bench_retrieve)
