"""`--runner ray` with no Prefect server configured: the workers report to the flow's temporary one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os
from prefect import flow, task
from flows.runners import make_task_runner

@task
def pid() -> list:
    return [os.getpid(), os.environ.get("PREFECT_API_URL")]

@flow(task_runner=make_task_runner("ray", workers=2))
def spread() -> list:
    return [f.result() for f in [pid.submit() for _ in range(4)]]

seen = spread()
from prefect.server.api.server import SubprocessASGIServer
print("RESULT", json.dumps({"workers": seen, "flow": os.getpid(), "api": SubprocessASGIServer().api_url}))
"""


def test_ray_tasks_run_on_workers_with_prefects_temporary_server(tmp_path: Path) -> None:
    """Without PREFECT_API_URL each Ray worker used to start a temporary server of its own and
    time out; now the flow's server is handed to them and the tasks complete on worker PIDs."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    pids = [pid for pid, _ in result["workers"]]
    assert len(pids) == 4 and result["flow"] not in pids
    assert {api for _, api in result["workers"]} == {result["api"]}  # the flow's own server
