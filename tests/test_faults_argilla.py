"""The Argilla server killed mid-push and mid-pull, then restarted: no duplicate record, no lost response.

The session's shared server keeps running for the other tests; this module starts its own
(redis, the search stand-in, a migrated SQLite database and `argilla_server start`, with the
shared fixture's helpers) so that it can SIGKILL the server process and start it again on the
same port and database. The kills land at fixed points: after the push's first batch (its
`on_batch` hook) and right after the pull's first page of answered records arrived (an httpx
response hook on the SDK client the pull uses).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from annotation.client import connect
from annotation.pull import pull_verifications
from annotation.push import ensure_dataset, push_pairs
from annotation.settings import LABEL_CANDIDATE_1
from tests.annotation_helpers import respond, sample_attributes, sample_pairs, server_records
from tests.fixtures.argilla_server import (
    _BOOTSTRAP,
    SERVER_PYTHON,
    STARTUP_TIMEOUT_S,
    WORKSPACE,
    ArgillaServer,
    ArgillaUser,
    _api_ready,
    _create_annotator,
    _redis_ready,
    _require_services,
    _stop,
    _wait_until,
    free_port,
)
from tests.services.opensearch_standin import OpenSearchStandin

pytestmark = pytest.mark.argilla


class KillableArgilla:
    """An Argilla server of its own whose server process a test may kill and start again."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([str(SERVER_PYTHON), "-m", "argilla_server", "start", "--host",
                                          "127.0.0.1", "--port", str(self.port)], env=self.env, cwd=self.home,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        owner_key = self.env["SYNPREF_TEST_OWNER_KEY"]
        _wait_until(lambda: _api_ready(self.url, owner_key), self.proc, "argilla server", self.log,
                    STARTUP_TIMEOUT_S)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="module")
def killable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KillableArgilla, ArgillaServer]]:
    _require_services()
    home = tmp_path_factory.mktemp("argilla-killable")
    redis_port = free_port()
    standin = OpenSearchStandin().start()
    with (home / "redis.log").open("wb") as out:
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save",
                                  "", "--appendonly", "no", "--dir", str(home)],
                                 stdout=out, stderr=subprocess.STDOUT)
    server = KillableArgilla(home)
    try:
        _wait_until(lambda: _redis_ready(redis_port), redis, "redis-server", home / "redis.log", 30)
        owner = ArgillaUser("faults-owner", secrets.token_urlsafe(12), "owner-" + secrets.token_hex(16),
                            "owner")
        server.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ARGILLA_", "VIRTUAL_ENV"))},
            "ARGILLA_HOME_PATH": str(home),
            "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{home}/argilla.db?check_same_thread=False",
            "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "ARGILLA_SEARCH_ENGINE": "opensearch",
            "ARGILLA_ELASTICSEARCH": standin.url, "ARGILLA_ENABLE_TELEMETRY": "0", "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", "SYNPREF_TEST_OWNER_KEY": owner.api_key,
        }
        owner_env = {**server.env, "SYNPREF_OWNER_NAME": owner.username,
                     "SYNPREF_OWNER_PASSWORD": owner.password, "SYNPREF_OWNER_KEY": owner.api_key,
                     "SYNPREF_WORKSPACE": WORKSPACE}
        done = subprocess.run([str(SERVER_PYTHON), "-c", _BOOTSTRAP], env=owner_env, cwd=home,
                              capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        server.start()
        annotator = _create_annotator(server.url, owner.api_key, "annotator-1")
        yield server, ArgillaServer(server.url, WORKSPACE, owner, [annotator], standin.url, home, server.log)
    finally:
        if server.proc is not None:
            _stop(server.proc)
        _stop(redis)
        standin.stop()


def test_push_killed_mid_way_completes_on_the_rerun_without_duplicates(
        killable: tuple[KillableArgilla, ArgillaServer]) -> None:
    server, view = killable
    pairs = sample_pairs(12)
    attrs = sample_attributes(pairs)
    client = connect(server.url, api_key=view.owner.api_key)
    dataset = ensure_dataset(client, "faults-push", WORKSPACE)

    def kill_after_first_batch(batches: int, sent: int) -> None:
        if batches == 1:
            server.kill()

    with pytest.raises(Exception) as failed:  # whatever the SDK raises for a dead server
        push_pairs(client, dataset, pairs, attrs, batch_size=5, on_batch=kill_after_first_batch)
    assert not server.alive, f"the push did not reach the server's death: {failed.value!r}"
    server.start()
    client = connect(server.url, api_key=view.owner.api_key)
    dataset = ensure_dataset(client, "faults-push", WORKSPACE)
    assert len(server_records(view, dataset.id)) == 5  # the first batch, committed before the kill
    rerun = push_pairs(client, dataset, pairs, attrs, batch_size=5)
    assert (rerun.created, rerun.skipped) == (7, 5)
    ids = [r["external_id"] for r in server_records(view, dataset.id)]
    assert len(ids) == len(set(ids)) == 12 and set(ids) == {p.pair_id for p in pairs}


def test_pull_killed_mid_way_loses_no_response_on_the_rerun(
        killable: tuple[KillableArgilla, ArgillaServer]) -> None:
    server, view = killable
    if not server.alive:
        server.start()
    pairs = sample_pairs(6)
    client = connect(server.url, api_key=view.owner.api_key)
    dataset = ensure_dataset(client, "faults-pull", WORKSPACE)
    push_pairs(client, dataset, pairs, sample_attributes(pairs))
    for record in server_records(view, dataset.id):
        respond(view, view.annotators[0], record, LABEL_CANDIDATE_1)

    def kill_after_the_records_page(response: httpx.Response) -> None:
        if "/records/search" in str(response.request.url) and server.alive:
            server.kill()

    hooks: dict[str, Any] = client.http_client.event_hooks
    hooks["response"] = [*hooks.get("response", []), kill_after_the_records_page]
    client.http_client.event_hooks = hooks
    with pytest.raises(Exception):  # noqa: B017 - the next request finds no server
        pull_verifications(client, dataset)
    assert not server.alive
    server.start()
    client = connect(server.url, api_key=view.owner.api_key)
    dataset = ensure_dataset(client, "faults-pull", WORKSPACE)
    result = pull_verifications(client, dataset)
    keys = [(v.pair_id, v.annotator) for v in result.verifications]
    assert len(keys) == len(set(keys)) == len(pairs)
    assert {v.pair_id for v in result.verifications} == {p.pair_id for p in pairs}
