"""A judge endpoint killed mid-stage: its requests move to another endpoint, or, with none left, the
stage stops naming the endpoint, keeps what was judged, and a re-run judges only the rest.

The killed server is a real `vllm serve` of its own (the session's shared server keeps running
for the other tests); it is SIGKILLed between two chunks of the stage, from the stage's own
progress callback, so the kill lands at the same point every time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from pipeline.judges import JudgeError, build_judges, judge_pairs
from schemas.config.judges import JudgeConfig
from tests.fixtures.judge_pairs import workspace_with_pairs
from tests.fixtures.vllm_server import (
    SERVED_MAX_MODEL_LEN,
    SERVED_NAME,
    VLLMServer,
    _stop,
    _wait_healthy,
    cpu_engine_env,
    free_port,
)

pytestmark = pytest.mark.vllm
CHOICE = {"structured_outputs": {"choice": ["1", "2"]}}
KEY = ["pair_id", "judge", "sample", "order", "round"]


class KillableServer:
    """`vllm serve` of the tiny LM on a fixed port, which a test may kill and start again."""

    def __init__(self, model: Path, log: Path) -> None:
        self.model, self.log, self.port = model, log, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", "bfloat16", "--max-model-len", str(SERVED_MAX_MODEL_LEN),
               "--gpu-memory-utilization", "0.3", "--enforce-eager"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**cpu_engine_env(), "HF_HUB_OFFLINE": "1"})
        _wait_healthy(self.proc, f"http://127.0.0.1:{self.port}", self.log)

    def kill(self) -> None:
        """SIGKILL the server and the engine process it spawned, and wait until it is gone."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@pytest.fixture(scope="module")
def killable(tiny_causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KillableServer]:
    server = KillableServer(tiny_causal_lm, tmp_path_factory.mktemp("killable-vllm") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def kill_after_first_chunk(server: KillableServer) -> Callable[[str, int, int], None]:
    """A progress callback that kills `server` once the stage's first chunk is judged and stored."""
    def progress(judge: str, done: int, total: int) -> None:
        if done > 0 and server.proc is not None and server.proc.poll() is None:
            server.kill()

    return progress


def judgments(ws: object) -> pl.DataFrame:
    return pl.from_arrow(ws.read("judgments"))  # type: ignore[attr-defined,return-value]


def test_with_every_endpoint_killed_the_stage_stops_and_a_rerun_judges_only_the_rest(
        killable: KillableServer, tmp_path: Path) -> None:
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    cfg = JudgeConfig(name="served", kind="openai", model=SERVED_NAME, extra_body=CHOICE,
                      endpoints=[killable.base_url], retries=1, concurrency=2)
    with pytest.raises(JudgeError, match=f"{killable.base_url} failed after 2 attempts: APIConnectionError"):
        judge_pairs(ws, build_judges([cfg]), ids, round=1, seed=0, chunk_pairs=2,
                    progress=kill_after_first_chunk(killable))
    kept = judgments(ws)
    assert kept.height == 4 and kept["pair_id"].n_unique() == 2  # the first chunk, both orders
    killable.start()  # the same endpoint, back
    again = judge_pairs(ws, build_judges([cfg]), ids, round=1, seed=0, chunk_pairs=2)
    assert (again.skipped, again.judgments_written) == (2, 2 * (len(ids) - 2))
    stored = judgments(ws)
    assert stored.height == 2 * len(ids) and not stored.select(KEY).is_duplicated().any()
    assert stored.filter(pl.col("pair_id").is_in(kept["pair_id"].to_list())).sort(KEY).equals(kept.sort(KEY))


def test_a_killed_endpoints_requests_go_to_the_other(
        killable: KillableServer, vllm_server: VLLMServer, tmp_path: Path) -> None:
    if killable.proc is None or killable.proc.poll() is not None:
        killable.start()
    ws, ids = workspace_with_pairs(tmp_path / "ws")
    cfg = JudgeConfig(name="served", kind="openai", model=SERVED_NAME, extra_body=CHOICE,
                      endpoints=[killable.base_url, vllm_server.base_url], retries=2, concurrency=2)
    stats = judge_pairs(ws, build_judges([cfg]), ids, round=1, seed=0, chunk_pairs=2,
                        progress=kill_after_first_chunk(killable))
    assert killable.proc is not None and killable.proc.poll() is not None  # it was killed mid-stage
    assert stats.judgments_written == 2 * len(ids) and stats.invalid == 0
    stored = judgments(ws)
    assert stored.height == 2 * len(ids) and not stored.select(KEY).is_duplicated().any()
    assert stored["margin"].is_not_null().all()
