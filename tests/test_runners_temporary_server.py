"""`--runner ray` and `--runner dask` with no Prefect server configured: the workers report to the
flow's temporary server, not to servers of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, time
from prefect import flow, get_client, task
from flows.runners import make_task_runner

@task
def pid() -> list:
    return [os.getpid(), os.environ.get("PREFECT_API_URL")]

out = {}
for runner in ("dask", "ray"):
    @flow(task_runner=make_task_runner(runner, workers=2))
    def spread() -> list:
        return [f.result() for f in [pid.submit() for _ in range(4)]]

    seen = spread()
    # The server records task runs from the events the workers send, after the flow has its
    # results: wait (up to a minute) until it has heard of as many as ran so far.
    expected, deadline = 4 * (len(out) + 1), time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            heard = sum(run.name.startswith("pid-") for run in client.read_task_runs())
            if heard >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    out[runner] = {"workers": seen, "heard": heard}
from prefect.server.api.server import SubprocessASGIServer
print("RESULT", json.dumps({"runs": out, "flow": os.getpid(), "api": SubprocessASGIServer().api_url}))
"""


def test_dask_and_ray_tasks_report_to_prefects_temporary_server_of_the_flow(tmp_path: Path) -> None:
    """Without PREFECT_API_URL each Ray worker used to start a temporary server of its own and
    time out, and each Dask worker one of its own (about 10 s before its first task) that took
    its task runs out of the flow's sight; now the flow's server is handed to them, the tasks
    complete on worker PIDs and the flow's server has heard of every one."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=500, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    for runner, heard in (("dask", 4), ("ray", 8)):  # the server keeps the runs of both flows
        run = result["runs"][runner]
        pids = [pid for pid, _ in run["workers"]]
        assert len(pids) == 4 and result["flow"] not in pids, runner
        assert {api for _, api in run["workers"]} == {result["api"]}, runner  # the flow's own server
        assert run["heard"] == heard, runner
