"""`synpref bench tasks`: what one Prefect task costs on each runner, before it does any work.

Every sharded stage pays this per task, so it sets the smallest partition worth running on a
runner: a task that does less work than its bookkeeping is better merged with its neighbours.
The flow submits no-op tasks one after another (the latency of a lone task) and all at once (the
throughput of the runner's bookkeeping), each runner in a fresh process with its own cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Annotated, Any

import typer

_CHILD = "flows.bench.tasks"


def _noop(i: int) -> int:
    return i


def measure(runner: str, tasks: int, workers: int) -> dict[str, Any]:
    """Run the no-op flow on `runner` in this process; its timings."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.runners import make_task_runner

    noop = task(_noop, name="noop", cache_policy=NO_CACHE)

    @flow(name="bench-tasks", task_runner=make_task_runner(runner, workers=workers))
    def tasks_flow(n: int) -> dict[str, float]:
        started = time.perf_counter()
        # Workers start and import on their first task: warm every one before measuring.
        for future in [noop.submit(i) for i in range(4 * max(1, workers))]:
            future.result()
        first = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(n):
            noop.submit(i).result()
        serial = time.perf_counter() - started
        started = time.perf_counter()
        for future in [noop.submit(i) for i in range(n)]:
            future.result()
        parallel = time.perf_counter() - started
        return {"first_task_s": first, "serial_ms_per_task": 1000 * serial / n,
                "parallel_ms_per_task": 1000 * parallel / n}

    started = time.perf_counter()
    result = tasks_flow(tasks)
    return {"runner": runner, "tasks": tasks, "workers": workers, **result,
            "flow_s": time.perf_counter() - started}


def register(bench_app: typer.Typer) -> None:
    """Add `synpref bench tasks`."""

    @bench_app.command("tasks")
    def bench_tasks(
        runners: Annotated[list[str] | None, typer.Option(
            "--runner", help="local | dask | ray (repeat it). Default: local and dask.")] = None,
        tasks: Annotated[int, typer.Option("--tasks", help="No-op tasks per measurement.")] = 40,
        workers: Annotated[int, typer.Option("--workers", help="Threads or worker processes.")] = 2,
    ) -> None:
        """Milliseconds of Prefect bookkeeping per task on each runner: a lone task, and many at once."""
        from flows.bench.machine import machine_info
        from flows.cli.common import console, table

        console.print(machine_info())
        console.print(f"load={' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        rows = []
        for runner in runners or ["local", "dask"]:
            env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
            child = subprocess.run([sys.executable, "-m", _CHILD, runner, str(tasks), str(workers)],
                                   capture_output=True, text=True, env=env)
            lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
            if child.returncode != 0 or not lines:
                console.print(f"[red]{runner}: failed[/] {child.stderr.strip()[-800:]}")
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            rows.append([r["runner"], str(r["workers"]), str(r["tasks"]), f"{r['first_task_s']:.1f}",
                         f"{r['serial_ms_per_task']:.0f}", f"{r['parallel_ms_per_task']:.0f}",
                         f"{r['flow_s']:.1f}"])
        console.print(table("Prefect task bookkeeping", ["runner", "workers", "tasks", "warm-up s",
                                                         "ms per task, one at a time",
                                                         "ms per task, all at once", "flow s"], rows))


if __name__ == "__main__":
    name, count, n_workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print("RESULT " + json.dumps(measure(name, count, n_workers)), flush=True)
