"""`synpref bench faults`: the fault matrix, measured on a small real curation run.

The kill matrix counts the crash sites of an uninterrupted small curate (`SYNPREF_FAILPOINT=
count:PATH`, pipeline/failpoints.py), draws `--kills` of them with a seed, and for each one runs
the same curate in a fresh workspace with `SYNPREF_FAILPOINT=write:N`: the process must die by
SIGKILL at that write, the workspace must hold nothing damaged, and a plain re-run must finish
with the uninterrupted run's rows (none lost, none twice) and an export whose files have the same
sha256 (flows/bench/fault_runs.py). A run killed holding the lease is resumed the same way; a
full disk and damaged parts are in flows/bench/fault_cases.py.
Every run is its own process, sharing one Prefect server that the bench starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.bench.fault_runs import (
    BUNDLED,
    Outcome,
    Reference,
    compare_rows,
    damaged,
    export_hashes,
    reference_run,
    run_curate,
    small_config,
    table_keys,
)


def kill_and_resume(ref: Reference, failpoint: str, data: Path, folder: Path, env: dict[str, str],
                    outcome: Outcome) -> dict[str, Any]:
    """One fault: the curate killed at `failpoint` in a fresh workspace, checked, resumed, compared
    with `ref`; adds to `outcome` and returns the point's figures."""
    name = failpoint.replace(":", "-")
    workspace, config = folder / name, folder / f"{name}.toml"
    config.write_text(small_config(data, workspace))
    killed = run_curate(config, env, failpoint)
    outcome.runs += 1
    row: dict[str, Any] = {"failpoint": failpoint, "killed_s": round(killed.seconds, 1)}
    if killed.returncode != -signal.SIGKILL:
        outcome.failures.append(f"{failpoint}: rc {killed.returncode}, not SIGKILL")
        return row
    outcome.faults += 1
    if broken := damaged(workspace):
        outcome.failures.append(f"{failpoint}: damaged after the kill: {broken}")
    resumed = run_curate(config, env)
    outcome.runs += 1
    row["resumed_s"] = round(resumed.seconds, 1)
    if resumed.returncode != 0:
        outcome.failures.append(f"{failpoint}: resume failed (rc {resumed.returncode}): "
                                f"{resumed.output[-500:]}")
        return row
    lost, dups, extra = compare_rows(ref.keys, table_keys(workspace))
    hashes = export_hashes(workspace, folder / f"{name}-export")
    same = hashes == ref.export
    outcome.rows_lost += lost
    outcome.duplicates += dups
    outcome.extra_rows += extra
    outcome.exports += 1
    outcome.identical_exports += same
    if not same:
        differ = sorted(k for k in set(hashes) | set(ref.export) if hashes.get(k) != ref.export.get(k))
        outcome.failures.append(f"{failpoint}: export files differ: {differ}")
    row.update(lost=lost, duplicates=dups, extra=extra, identical_export=same)
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.rmtree(folder / f"{name}-export", ignore_errors=True)
    return row


def kill_matrix(ref: Reference, kills: int, seed: int, data: Path, folder: Path, env: dict[str, str],
                echo: Any = print) -> Outcome:
    """SIGKILL the small curate at `kills` seeded write events, resume each, compare with `ref`."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    points = sorted(random.Random(seed).sample(range(1, ref.write_events + 1), min(kills, ref.write_events)))
    outcome = Outcome("SIGKILL at a write event, resumed")
    outcome.detail = {"write_events": ref.write_events, "points": points, "seed": seed,
                      "uninterrupted_s": round(ref.seconds, 1), "per_point": []}
    echo(f"uninterrupted run: {ref.write_events} write events, {ref.seconds:.0f} s; killing at {points}")
    for point in points:
        row = kill_and_resume(ref, f"write:{point}", data, folder, env, outcome)
        outcome.detail["per_point"].append(row)
        echo("  ".join(f"{k}={v}" for k, v in row.items()))
    outcome.seconds = round(time.perf_counter() - started, 1)
    return outcome


def kill_chain(ref: Reference, kills: int, seed: int, data: Path, folder: Path, env: dict[str, str],
               echo: Any = print) -> Outcome:
    """The same seeded points, cheaper: one workspace, killed again and again, each run at the gap
    to the next point (its own writes are numbered from 1, and it skips what is done), then one
    plain run to the end, compared with `ref`. Points a run never reaches are not injected."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    points = sorted(random.Random(seed).sample(range(1, ref.write_events + 1), min(kills, ref.write_events)))
    outcome = Outcome("SIGKILL at a write event, chained, resumed")
    outcome.detail = {"write_events": ref.write_events, "points": points, "seed": seed,
                      "uninterrupted_s": round(ref.seconds, 1), "per_point": []}
    echo(f"uninterrupted run: {ref.write_events} write events, {ref.seconds:.0f} s; killing at {points}")
    workspace, config = folder / "chain", folder / "chain.toml"
    config.write_text(small_config(data, workspace))
    previous, finished = 0, False
    for point in points:
        gap = point - previous
        previous = point
        run = run_curate(config, env, f"write:{gap}")
        outcome.runs += 1
        row = {"point": point, "failpoint": f"write:{gap}", "seconds": round(run.seconds, 1),
               "killed": run.returncode == -signal.SIGKILL}
        outcome.detail["per_point"].append(row)
        echo("  ".join(f"{k}={v}" for k, v in row.items()))
        if run.returncode == 0:
            finished = True  # this run had fewer writes left than the gap: the rest are not injected
            break
        if run.returncode != -signal.SIGKILL:
            outcome.failures.append(f"write:{gap} (point {point}): rc {run.returncode}: {run.output[-500:]}")
            break
        outcome.faults += 1
        if broken := damaged(workspace):
            outcome.failures.append(f"point {point}: damaged after the kill: {broken}")
    if not finished:
        resumed = run_curate(config, env)
        outcome.runs += 1
        if resumed.returncode != 0:
            outcome.failures.append(f"resume failed (rc {resumed.returncode}): {resumed.output[-500:]}")
            outcome.seconds = round(time.perf_counter() - started, 1)
            return outcome
    lost, dups, extra = compare_rows(ref.keys, table_keys(workspace))
    hashes = export_hashes(workspace, folder / "chain-export")
    outcome.rows_lost, outcome.duplicates, outcome.extra_rows = lost, dups, extra
    outcome.exports, outcome.identical_exports = 1, int(hashes == ref.export)
    if hashes != ref.export:
        differ = sorted(k for k in set(hashes) | set(ref.export) if hashes.get(k) != ref.export.get(k))
        outcome.failures.append(f"export files differ: {differ}")
    outcome.seconds = round(time.perf_counter() - started, 1)
    return outcome


def killed_lease_holder(ref: Reference, data: Path, folder: Path, env: dict[str, str]) -> Outcome:
    """SIGKILL right after the run took the workspace's lease: the re-run takes it over (its holder's
    pid is dead) and finishes with the uninterrupted run's rows and export."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    outcome = Outcome("SIGKILL holding the lease, resumed")
    outcome.detail = kill_and_resume(ref, "lease:1", data, folder, env, outcome)
    outcome.seconds = round(time.perf_counter() - started, 1)
    return outcome


@contextlib.contextmanager
def prefect_server(folder: Path) -> Iterator[dict[str, str]]:
    """One Prefect API for every run of the bench (each process would otherwise start its own
    temporary server): the environment the runs get."""
    env = dict(os.environ, PREFECT_HOME=str(folder / "prefect"), PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if os.environ.get("PREFECT_API_URL"):
        yield env
        return
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ.update(PREFECT_HOME=env["PREFECT_HOME"], PREFECT_SERVER_ANALYTICS_ENABLED="false")
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=180)
    try:
        yield dict(env, PREFECT_API_URL=server.api_url)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def outcome_row(o: Outcome) -> list[Any]:
    return [o.case, o.runs, o.faults, o.rows_lost, o.duplicates,
            f"{o.identical_exports}/{o.exports}" if o.exports else "-", round(o.seconds, 1),
            "ok" if o.ok else "FAILED"]


def register(bench_app: typer.Typer) -> None:
    """Add `synpref bench faults`."""

    @bench_app.command("faults")
    def bench_faults(
        kills: Annotated[int, typer.Option(
            "--kills", help="Seeded write events to SIGKILL the run at.")] = 20,
        seed: Annotated[int, typer.Option("--seed", help="Seeds the draw of kill points.")] = 0,
        data: Annotated[Path, typer.Option("--data", help="The bundled sample's folder.")] = BUNDLED,
        out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON report here.")] = None,
        keep: Annotated[Path | None, typer.Option(
            "--keep", help="Work in this folder and keep it (default: a temp folder, deleted).")] = None,
        chain: Annotated[bool, typer.Option(
            "--chain", help="Kill one workspace at every point in turn, then resume once (about one run's "
                            "time instead of one per point).")] = False,
        only: Annotated[list[str] | None, typer.Option(
            "--only", help="Run only these cases (repeat): kills, lease, disk-full, damaged-part.")] = None,
    ) -> None:
        """SIGKILL a small real curate at seeded write events and resume it; plus a killed lease
        holder, a full disk and a damaged part. Prints runs, faults injected, rows lost,
        duplicates and identical exports per case."""
        from flows.bench import fault_cases
        from flows.bench.machine import machine_info
        from flows.cli.common import console, table

        console.print(machine_info())
        folder = keep or Path(tempfile.mkdtemp(prefix="synpref-faults-"))
        folder.mkdir(parents=True, exist_ok=True)
        cases = set(only or ["kills", "lease", "disk-full", "damaged-part"])
        outcomes: list[Outcome] = []
        try:
            with prefect_server(folder) as env:
                def echo(line: str) -> None:
                    console.print(line, markup=False, highlight=False)

                if cases & {"kills", "lease"}:
                    ref = reference_run(data, folder / "reference", env)
                    if "kills" in cases:
                        matrix = kill_chain if chain else kill_matrix
                        outcomes.append(matrix(ref, kills, seed, data, folder / "kills", env, echo))
                    if "lease" in cases:
                        outcomes.append(killed_lease_holder(ref, data, folder / "lease", env))
                if "disk-full" in cases:
                    outcomes.append(fault_cases.disk_full(data, folder / "disk-full"))
                if "damaged-part" in cases:
                    outcomes.append(fault_cases.damaged_part(data, folder / "damaged"))
        finally:
            if keep is None:
                shutil.rmtree(folder, ignore_errors=True)
        columns = ["fault", "runs", "faults injected", "rows lost", "duplicate rows", "identical exports",
                   "seconds", "result"]
        rows = [outcome_row(o) for o in outcomes]
        console.print(table("Faults", columns, rows))
        for o in outcomes:
            for failure in o.failures:
                console.print(f"FAILED {o.case}: {failure}", markup=False, highlight=False)
        report = {"machine": machine_info(), "kills": kills, "seed": seed, "chain": chain,
                  "cases": [asdict(o) | {"ok": o.ok} for o in outcomes],
                  "totals": {k: sum(getattr(o, k) for o in outcomes)
                             for k in ("runs", "faults", "rows_lost", "duplicates", "identical_exports",
                                       "exports", "seconds")}}
        console.print_json(json.dumps(report, default=str))
        if out is not None:
            out.write_text(json.dumps(report, indent=2, default=str))
        if not all(o.ok for o in outcomes):
            raise typer.Exit(1)
