"""Live progress of a run: `progress(stage, round, step, done, total)` events and their views.

Flows and round steps report where they are; whoever runs them (the `synpref curate` command)
listens and shows it: a rich status line on a terminal, one plain line per finished step in
logs and CI, JSON lines for scripts. With nobody listening an event costs a lock and a clock.
Events stay in this process: shard tasks on Dask or Ray workers report through their step.
Long work inside a step (encoding, judging, scoring shards) reports through `step_progress()`,
which reads the step the flow is in from a context variable set by `within()`: the pipeline
functions take a plain `(done, total)` callback and know nothing of stages.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TextIO

# Result keys that count a step's items, most telling first (round steps return dicts).
_ITEM_KEYS = ("judged", "scored", "written", "sent", "retrieved", "train_pairs", "rows", "pairs",
              "candidates", "generated", "added")


@dataclass(frozen=True)
class ProgressEvent:
    """Where a run is: `done` of `total` items of `step` (total None: not known yet).

    `rate` (items/s) and `eta_s` are measured from the step's first event; `note` says e.g.
    "done before" for a step a resumed run skips.
    """

    stage: str
    round: int | None
    step: str
    done: int
    total: int | None
    at: float
    elapsed_s: float
    rate: float | None
    eta_s: float | None
    note: str = ""

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def line(self) -> str:
        """`[12:01:03] round 1 · silver · 300/300 · 41 pairs/s · eta 0s`"""
        where = f"round {self.round}" if self.round is not None else self.stage
        parts = [where, self.step, f"{self.done}/{self.total if self.total is not None else '?'}"]
        if self.note:
            parts.append(self.note)
        elif self.finished and self.total == 1:  # a step that counts no items: its time says more
            parts.append(f"{self.elapsed_s:.1f}s")
        else:
            if self.rate is not None:
                parts.append(f"{self.rate:.0f} pairs/s" if self.rate >= 1 else f"{self.rate:.2f} pairs/s")
            parts.append(f"eta {self.eta_s:.0f}s" if self.eta_s is not None else f"{self.elapsed_s:.1f}s")
        return f"[{datetime.fromtimestamp(self.at).strftime('%H:%M:%S')}] " + " · ".join(parts)


Listener = Callable[[ProgressEvent], None]
_listeners: list[Listener] = []
_started: dict[tuple[str, int | None, str], float] = {}
_lock = threading.Lock()
_write_lock = threading.Lock()
Where = tuple[str, int | None, str]
_current: contextvars.ContextVar[Where | None] = contextvars.ContextVar("synpref_step", default=None)


def progress(stage: str, round: int | None, step: str, done: int, total: int | None,
             *, note: str = "") -> None:
    """Report that `step` of `stage` (round `round`, if any) has `done` of `total` items."""
    now = time.time()
    key = (stage, round, step)
    with _lock:
        if not _listeners:
            return
        started = _started.setdefault(key, now)
        listeners = list(_listeners)
    elapsed = now - started
    rate = done / elapsed if done and elapsed > 0 and not note else None
    eta = (total - done) / rate if rate and total is not None else None
    event = ProgressEvent(stage, round, step, done, total, now, elapsed, rate, eta, note)
    if event.finished:
        with _lock:
            _started.pop(key, None)
    for listener in listeners:
        listener(event)


def step_items(result: Any) -> int | None:
    """How many items a finished step handled, read from its result dict (None: not said)."""
    if not isinstance(result, dict):
        return None
    for key in _ITEM_KEYS:
        value = result.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    lists = [v for v in result.values() if isinstance(v, list)]
    return sum(len(v) for v in lists) if lists else None


@contextmanager
def within(stage: str, round: int | None, step: str) -> Iterator[None]:
    """Mark the block as `step` of `stage` so that `step_progress()` callbacks report under it.

    The mark is a context variable: it follows the flow into tasks run in this process (Prefect
    copies the context into its worker threads) and is absent on remote workers."""
    token = _current.set((stage, round, step))
    try:
        yield
    finally:
        _current.reset(token)


def step_progress(part: str | None = None) -> Callable[[int, int], None] | None:
    """A `(done, total)` callback for the current step's items (`part` names a sub-step, e.g. a
    judge), or None outside a step or with nobody listening, so callers skip the bookkeeping."""
    where = _current.get()
    with _lock:
        listened = bool(_listeners)
    if where is None or not listened:
        return None
    stage, round_, step = where
    name = f"{step}/{part or 'items'}"

    def report(done: int, total: int) -> None:
        if total > 0:  # nothing left to do in this step: no line for it
            progress(stage, round_, name, done, total)

    return report


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Deliver every event reported in this process to `listener` while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
            if not _listeners:
                _started.clear()


def _write(out: TextIO, line: str) -> None:
    # Not print(): flows with log_prints=True turn prints into (filtered) Prefect log records.
    with _write_lock:
        out.write(line + "\n")
        out.flush()


def plain_lines(out: TextIO) -> Listener:
    """One line per finished step (logs, CI)."""

    def show(event: ProgressEvent) -> None:
        if event.finished:
            _write(out, event.line())

    return show


def json_lines(out: TextIO) -> Listener:
    """Every event as one JSON object per line (scripts)."""

    def show(event: ProgressEvent) -> None:
        _write(out, json.dumps({"event": "progress", **asdict(event), "finished": event.finished}))

    return show


def progress_bar(console: Any, *, unit: str | None = None, transient: bool = False) -> Any:
    """A rich progress display: spinner, description, bar, done of all (in `unit`), elapsed and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               *([TextColumn(unit)] if unit else []), TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=transient)


@contextmanager
def rich_view(console: Any) -> Iterator[Listener]:
    """A live bar for the current step on a terminal, with finished steps printed above it."""
    bar = progress_bar(console, transient=True)
    tasks: dict[tuple[str, int | None, str], Any] = {}

    def show(event: ProgressEvent) -> None:
        key = (event.stage, event.round, event.step)
        if event.finished:
            task = tasks.pop(key, None)
            if task is not None:
                bar.remove_task(task)
            bar.console.print(event.line(), markup=False, highlight=False)
            return
        where = f"round {event.round}" if event.round is not None else event.stage
        if key not in tasks:
            tasks[key] = bar.add_task(f"{where} · {event.step}", total=event.total)
        bar.update(tasks[key], completed=event.done, total=event.total)

    with bar:
        yield show
