"""Ingest: every configured source into the workspace's pool (bad rows to quarantine).

A map and an ordered commit. Every file of every source (a big file: each byte range or run of
row groups, pipeline/sources/ranges.py) is staged by its own task on the flow's
task runner (threads, Dask or Ray workers: flows/runners.py): it parses and validates the file,
stores its images, writes its batches and their keys by bucket as scratch under
`_ingest/<run>/` and returns a receipt (counts, scratch files, PID). The flow holds only
receipts: repeat tasks check every source's keys against the pool's key index and the sources
before it (a range of key buckets each, all sources at once), then, source after source in config
order, part tasks write its new pairs (a staged batch each) numbered after the pool's largest
`ingest_seq`, and the flow commits them, as one process reading the sources in that order would
(pipeline/ingest.py `ingest_source`). So the
pool, quarantine and dropped rows do not depend on the runner or the worker count. A source
whose file fails commits nothing (sources before it stay committed); the pool is keyed by
pair_id, so a re-run adds nothing twice.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture, wait

from flows.runners import make_task_runner
from flows.tasks import ingest_count_task, ingest_file_task, ingest_part_task, ingest_repeats_task, stats_dict
from pipeline.ingest import Unit, commit_sources, file_token, plan_units, remove_scratch
from pipeline.ingest_parts import Job, WriteParts
from pipeline.ingest_repeats import RepeatJob, RepeatReceipt, SplitRepeats
from pipeline.parts import Receipt, discard
from pipeline.sources.ranges import numbered, ranges_to_count
from pipeline.store import Workspace
from schemas.config import SynprefConfig
from schemas.config.sources import SourceConfig
from schemas.errors import ConfigError


@flow(name="ingest")
def ingest_flow(config: SynprefConfig, runner: str = "local", runner_address: str | None = None,
                workers: int | None = None) -> list[dict[str, Any]]:
    """The config's sources, their files staged by tasks on `runner`; one stats dict per source."""
    if not config.sources:
        raise ConfigError("the config names no [[sources]] to ingest")
    task_runner = make_task_runner(runner, address=runner_address, workers=workers)
    ws = Workspace(config.workspace)
    return ingest_sources_flow.with_options(task_runner=task_runner)(ws.uri, list(config.sources))


@flow(name="ingest-sources")
def ingest_sources_flow(ws_uri: str, sources: list[SourceConfig]) -> list[dict[str, Any]]:
    """Stage every unit (a file, a range of a big file) at once on the flow's task runner, tell
    every source's repeats in one pass of repeat tasks, then commit source by source in order."""
    ws = Workspace(ws_uri)
    run = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    plans = _numbered_plans(sources)  # a missing file fails before any task
    futures: list[list[PrefectFuture[dict[str, Any]]]] = [
        [ingest_file_task.submit(ws.uri, source, index, file_token(_source_token(run, i), j))
         for j, index in enumerate(plan)]
        for i, (source, plan) in enumerate(zip(sources, plans, strict=True))]
    results: list[dict[str, Any]] = []
    try:
        staged: list[list[dict[str, Any]]] = []
        failed: BaseException | None = None
        for pending in futures:  # the sources before a failing one are still committed
            try:
                staged.append([f.result() for f in pending])
            except BaseException as exc:
                failed = exc
                break
        cpu = time.process_time()
        split: list[list[RepeatReceipt]] = []
        tokens = [_source_token(run, i) for i in range(len(staged))]
        every = commit_sources(ws, sources[:len(staged)], staged, tokens, parts_on_runner(ws),
                               _repeats_on_runner(ws, split)) if staged else []
        jobs = [r for job in split for r in job]
        for stats, receipts in zip(every, staged, strict=True):
            stats.seconds = time.perf_counter() - started
            stats.cpu_seconds = (time.process_time() - cpu) / len(every) + sum(
                float(r["cpu_seconds"]) for r in receipts)
            results.append({**stats_dict(stats), "tasks": len(receipts), "repeat_tasks": len(split),
                            "pids": sorted({int(r["pid"]) for r in receipts} | {r.pid for r in jobs}),
                            "task_seconds": round(sum(float(r["seconds"]) for r in receipts), 3),
                            "task_peak_rss_mb": round(max(float(r["peak_rss_mb"]) for r in receipts), 1)})
        if failed is not None:
            raise failed
    except BaseException:
        every_unit = [f for pending in futures for f in pending]
        wait(every_unit)  # no task still writes scratch below
        _settle(every_unit)
        raise
    finally:
        remove_scratch(ws, run)
    return results


def _numbered_plans(sources: list[SourceConfig]) -> list[list[Unit]]:
    """Every source's staging units, byte ranges numbered: the newlines of the ranges before them
    are counted by tasks on the flow's runner (a cheap pass over the bytes), all sources at once."""
    plans = [plan_units(source) for source in sources]
    counting = [{j: ingest_count_task.submit(source, plan[j]) for j in ranges_to_count(plan)}
                for source, plan in zip(sources, plans, strict=True)]
    wait([f for futures in counting for f in futures.values()])
    return [list(numbered(plan, {j: int(f.result()) for j, f in futures.items()}))
            for plan, futures in zip(plans, counting, strict=True)]


def parts_on_runner(ws: Workspace) -> WriteParts:
    """Part jobs (an ingest's or a compaction's) as tasks on the flow's task runner, all at once;
    a failure leaves no part behind."""

    def run(jobs: Sequence[Job]) -> list[Receipt]:
        futures = [ingest_part_task.submit(ws.uri, job) for job in jobs]
        parts: list[Receipt] = []
        failed: BaseException | None = None
        for future in futures:
            try:
                parts.append(future.result())
            except BaseException as exc:  # keep collecting: the written parts must be deleted
                failed = failed or exc
        if failed is not None:
            discard(ws, "pool", parts)
            raise failed
        return parts

    return run


def _repeats_on_runner(ws: Workspace, done: list[list[RepeatReceipt]]) -> SplitRepeats:
    """Repeat jobs as tasks on the flow's task runner, all at once; their receipts in job order,
    also added to `done`. A failure fails every source of the pass (their scratch, where the jobs
    wrote, is removed with them)."""

    def run(jobs: list[RepeatJob]) -> list[list[RepeatReceipt]]:
        futures = [ingest_repeats_task.submit(ws.uri, job) for job in jobs]
        wait(futures)
        receipts = [future.result() for future in futures]
        done.extend(receipts)
        return receipts

    return run


def _settle(futures: list[PrefectFuture[Any]]) -> None:
    """Wait out the engine's own re-runs of finished tasks. Dask recomputes a task whose result
    lived on a worker that died, while a future still refers to it; Prefect already holds the
    first run's state, so its `wait` returns at once while the re-run may still write scratch."""
    for future in futures:
        engine_future = getattr(future, "wrapped_future", None)
        wait_engine = getattr(engine_future, "exception", None)  # distributed.Future: blocks until done
        if callable(wait_engine):
            with contextlib.suppress(Exception):  # a re-run that failed (its input is gone) is done too
                wait_engine()


def _source_token(run: str, position: int) -> str:
    """The scratch folder of the run's `position`-th source (its files' folders inside it)."""
    return f"{run}/s{position:04d}"
