"""`synpref bench dedup-stage`: semantic dedup of a workspace of generated vectors, the one-process
`semantic_dedup` against the sharded stage (pipeline/semantic_dedup_stage.py) on a task runner.

The workspace holds N pool pairs and their conversation-view vectors (the clustered 384-d vectors
of `synpref bench dedup`, with near-copies planted at the end of the pool, so each copy is the
pair to drop), written straight to the tables: no encoder runs. Each run happens in a fresh
process on the same workspace (the `dropped` table is removed after it): wall seconds, planted
copies found, false drops, the peak RSS of the process that drove the run and of the processes
that ran its tasks.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.bench.machine import in_child

CHUNK = 100_000


def build_workspace(root: str, n: int, planted: int, view: str = "conversation") -> None:
    """N pool pairs and their vectors in `view`; the last `planted` vectors are near-copies of others."""
    import numpy as np
    import pyarrow as pa

    from flows.bench.embed import clustered_vectors
    from pipeline.covers import tagged
    from pipeline.embed import embeddings_schema, embeddings_table, vector_table
    from pipeline.parts import commit_keyed_parts, write_part
    from pipeline.stage import Partition
    from pipeline.store import Workspace
    from schemas.config.embed import EmbedConfig
    from schemas.pair import POOL_SCHEMA

    ws = Workspace(root)
    if ws.has_table("pool") and ws.row_count("pool") == n:
        return
    vectors = clustered_vectors(n, seed=2)  # what `synpref bench dedup` plants copies into
    rng = np.random.default_rng(3)
    source = rng.choice(n - planted, planted, replace=False)
    copies = vectors[source] + (0.2 / np.sqrt(384)) * rng.standard_normal((planted, 384), dtype=np.float32)
    vectors[n - planted :] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    model = EmbedConfig().model
    schema = embeddings_schema(384, model, view)
    for start in range(0, n, CHUNK):
        rows = range(start, min(n, start + CHUNK))
        ids = [pair_id(i) for i in rows]
        pool = pa.table({
            "pair_id": ids,
            "conversation": [[{"role": "user", "content": f"question {i}", "images": []}] for i in rows],
            "chosen": [f"answer {i}" for i in rows], "rejected": [f"other {i}" for i in rows],
            "source": ["bench"] * len(ids), "source_id": [str(i) for i in rows],
            "label_source": ["ai"] * len(ids), "license": [""] * len(ids), "meta": ["{}"] * len(ids),
            "ingest_seq": list(rows),
        }, schema=POOL_SCHEMA)
        ws.append("pool", pool, schema=POOL_SCHEMA)
        # the vectors of this pool part as the embed stage writes them: a part that says which
        # pool rows it comes from (pipeline/covers.py), so a partition task reads only its own
        shard = ws.manifest("pool")["shards"][-1]
        source = Partition(start // CHUNK, ((shard["file"], shard["sha256"], 0, len(ids)),))
        table = embeddings_table(model, view)
        part = write_part(ws, table, vector_table([(p, "bench", "") for p in ids],
                                                  vectors[rows.start : rows.stop], schema), schema)
        commit_keyed_parts(ws, table, [tagged(part, source)], schema, ["pair_id", "text_hash"])


def pair_id(i: int) -> str:
    return hashlib.sha256(f"bench-pair-{i}".encode()).hexdigest()


def _counts(ws: Any, n: int, planted: int) -> tuple[int, int]:
    """(planted copies found, other pairs dropped) of the run that just committed."""
    if not ws.has_table("dropped"):
        return 0, 0
    copies = {pair_id(i) for i in range(n - planted, n)}
    dropped = set(ws.read("dropped", columns=["pair_id"]).column(0).to_pylist())
    return len(dropped & copies), len(dropped - copies)


def _run(root: str, n: int, planted: int, mode: str, runner: str, workers: int, rows_per_partition: int,
         cell_rows: int, cells_probed: int, queue: Any) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    from flows.bench.machine import peak_rss_mb
    from flows.bench.scale import _reset_peak
    from pipeline.store import Workspace
    from schemas.config.embed import EmbedConfig, IndexConfig, SemanticDedupConfig

    ws = Workspace(root)
    ws.remove("dropped")
    embed, dedup = EmbedConfig(), SemanticDedupConfig(cells_probed=cells_probed)
    out: dict[str, Any] = {"mode": mode, "runner": runner if mode == "stage" else "-"}
    if mode == "before":
        from pipeline.semantic_dedup import semantic_dedup

        _reset_peak()
        start = time.perf_counter()
        stats = semantic_dedup(ws, embed, dedup, IndexConfig())
        out |= {"seconds": time.perf_counter() - start, "driver_rss_mb": peak_rss_mb(), "task_rss_mb": None,
                "tasks": 1, "search": stats.search}
    else:
        from flows.clean import semantic_dedup_flow
        from flows.runners import dask_cluster_kwargs, make_task_runner

        cluster = None
        if runner == "dask":  # started before the clock: its start-up is not the stage's time
            from distributed import LocalCluster

            cluster = LocalCluster(**dask_cluster_kwargs(workers))
        task_runner = make_task_runner(runner, address=cluster.scheduler_address if cluster else None,
                                       workers=workers)
        flow = semantic_dedup_flow.with_options(task_runner=task_runner)
        _warm_up()  # Prefect's temporary server starts here, not in the timed run
        _reset_peak()
        start = time.perf_counter()
        stats = flow(ws.uri, embed, dedup, IndexConfig(), rows_per_partition, cell_rows)
        out |= {"seconds": time.perf_counter() - start, "driver_rss_mb": peak_rss_mb(),
                "task_rss_mb": stats["task_peak_rss_mb"], "tasks": stats["tasks"], "search": stats["search"]}
        if cluster is not None:
            cluster.close()
    out["found"], out["false"] = _counts(ws, n, planted)
    ws.remove("dropped")
    queue.put(out)


def _warm_up() -> None:
    from prefect import flow

    flow(name="bench-warm-up")(lambda: None)()


def bench_dedup_stage(
    vectors: Annotated[int, typer.Option(help="Pool pairs, each with a generated 384-d vector.")] = 1_000_000,
    planted: Annotated[int, typer.Option(help="Near-copies (cosine ~0.98) planted among them.")] = 10_000,
    runner: Annotated[list[str] | None, typer.Option("--runner", help="local | dask, repeatable.")] = None,
    workers: Annotated[int, typer.Option(help="Local threads / Dask worker processes.")] = 2,
    rows_per_partition: Annotated[int, typer.Option(help="Pool rows per partition task.")] = 100_000,
    cell_rows: Annotated[int, typer.Option(help="Memberships per group of k-means cells.")] = 100_000,
    cells_probed: Annotated[int, typer.Option(help="k-means cells each vector is compared within.")] = 2,
    before: Annotated[bool, typer.Option(help="Also run the one-process semantic_dedup.")] = True,
    data_dir: Annotated[Path, typer.Option(help="Where the generated workspace is kept.")] = Path(
        "/tmp/synpref-bench-dedup"),
) -> None:
    """Semantic dedup of a generated workspace: one process against stage tasks on a runner."""
    from flows.bench.machine import machine_info
    from flows.cli.common import console, table

    console.print("machine: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()))
    root = str(data_dir / f"ws-{vectors}-{planted}")
    start = time.perf_counter()
    build_workspace(root, vectors, planted)
    console.print(f"workspace {root}: {vectors:,} pairs with vectors ({time.perf_counter() - start:.0f}s)")
    runs = [("before", "local")] if before else []
    runs += [("stage", r) for r in runner or ["local"]]
    rows = []
    for mode, name in runs:
        r = in_child(_run, root, vectors, planted, mode, name, workers, rows_per_partition, cell_rows,
                      cells_probed)
        rows.append([r["mode"], r["runner"], f"{r['seconds']:.1f}", f"{vectors / r['seconds']:,.0f}",
                     r["tasks"], f"{r['found']}/{planted}", r["false"], f"{r['driver_rss_mb']:,.0f}",
                     "-" if r["task_rss_mb"] is None else f"{r['task_rss_mb']:,.0f}", r["search"]])
        console.print(" | ".join(str(v) for v in rows[-1]))  # each run as it ends
    console.print(table(
        f"semantic dedup of {vectors:,} pairs (384-d vectors), rows_per_partition={rows_per_partition}, "
        f"cell_rows={cell_rows}, cells_probed={cells_probed}, workers={workers}",
        ["run", "runner", "wall s", "pairs/s", "tasks", "planted found", "false drops", "driver peak RSS MB",
         "task peak RSS MB", "search"], rows))
