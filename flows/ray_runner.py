"""Prefect's Ray task runner, with each task's events delivered before the task returns.

A task run on a Ray worker reaches the Prefect server as events that the worker's events
client sends from a background thread. When the flow ends, `ray.shutdown()` stops the workers,
and whatever a worker had not sent yet was lost: the server never heard of that task run, and
the UI showed fewer runs than ran. Prefect's own process-pool runner waits for the queue to
empty after each task; this runner does the same on Ray workers.
"""

from __future__ import annotations

from typing import Any

from prefect.events.worker import EventsWorker
from prefect_ray import RayTaskRunner


def flush_events() -> None:
    """Wait until this process's events client has sent what it holds (if it has started)."""
    with EventsWorker._instance_lock:
        started = bool(EventsWorker._instances)
    if started:
        EventsWorker.instance().wait_until_empty()


class DeliveringRayTaskRunner(RayTaskRunner):
    """`RayTaskRunner` whose remote function flushes the worker's events after each task."""

    @staticmethod
    def _run_prefect_task(*upstream_ray_obj_refs: Any, **kwargs: Any) -> Any:
        try:
            return RayTaskRunner._run_prefect_task(*upstream_ray_obj_refs, **kwargs)
        finally:
            flush_events()
