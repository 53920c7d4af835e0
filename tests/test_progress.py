"""Live progress: events from round steps, one plain line per step off a terminal, JSON lines."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flows.loop_state import step
from flows.progress import (
    ProgressEvent,
    json_lines,
    listening,
    plain_lines,
    progress,
    step_items,
    step_progress,
    within,
)
from pipeline.store import Workspace
from tests import flow_helpers
from tests.flow_helpers import write_config

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api
REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (round \d+|ingest|clean|stage1|stage2|export) · [\w./-]+ · "
                  r"\d+/\d+ · ")


def test_a_round_step_reports_its_start_and_end_and_a_resumed_step_says_so(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    events: list[ProgressEvent] = []
    with listening(events.append):
        step(ws, "rounds/2", "judge", lambda: {"judged": 40, "verdicts": {}})
        step(ws, "rounds/2", "judge", lambda: pytest.fail("a finished step ran again"))
        step(ws, "stage2", "filter-a", lambda: {"pair_ids": ["a", "b", "c"]})
    started, finished, resumed, *stage2 = events
    assert (started.stage, started.round, started.step, started.done, started.total) == ("stage1", 2, "judge",
                                                                                        0, None)
    assert (finished.done, finished.total, finished.finished) == (40, 40, True)
    assert finished.rate is not None and finished.rate > 0 and finished.eta_s == 0
    pattern = r"^\[\d\d:\d\d:\d\d\] round 2 · judge · 40/40 · [\d.]+ pairs/s · eta 0s$"
    assert re.match(pattern, finished.line())
    assert resumed.note == "done before" and resumed.line().endswith("round 2 · judge · 40/40 · done before")
    assert [(e.stage, e.round, e.done) for e in stage2] == [("stage2", None, 0), ("stage2", None, 3)]
    assert stage2[1].line().split("] ", 1)[1].startswith("stage2 · filter-a · 3/3 · ")


def test_views_print_one_line_per_finished_step_or_every_event_as_json() -> None:
    plain, as_json = io.StringIO(), io.StringIO()
    with listening(plain_lines(plain)), listening(json_lines(as_json)):
        progress("stage1", 1, "score", 0, 300)
        progress("stage1", 1, "score", 150, 300)
        progress("stage1", 1, "score", 300, 300)
    progress("stage1", 1, "ignored", 1, 1)  # nobody listens any more
    lines = plain.getvalue().splitlines()
    assert len(lines) == 1 and re.match(r"^\[\d\d:\d\d:\d\d\] round 1 · score · 300/300 · ", lines[0])
    events = [json.loads(line) for line in as_json.getvalue().splitlines()]
    assert [(e["done"], e["total"], e["finished"]) for e in events] == [(0, 300, False), (150, 300, False),
                                                                      (300, 300, True)]
    assert step_items({"judged": 7, "sent": 9}) == 7 and step_items({"human": [1], "silver": [2, 3]}) == 3


def test_long_work_inside_a_step_reports_its_items_under_the_step(shared_raw: Path, tmp_path: Path) -> None:
    from flows.tasks import stats_dict
    from pipeline.attributes import generate_attributes
    from pipeline.ingest import ingest_source
    from pipeline.sources import SourceSpec
    from schemas.config import AttributesConfig

    ws = Workspace(tmp_path / "ws")
    ingest_source(ws, SourceSpec(str(shared_raw / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"), limit=40))
    events: list[ProgressEvent] = []
    with listening(events.append):
        assert step_progress("pairs") is None  # outside a step nothing is reported
        step(ws, "rounds/1", "attributes",
             lambda: stats_dict(generate_attributes(ws, AttributesConfig(kind="heuristic", batch_size=16),
                                                  progress=step_progress("pairs"))))
        # A second run finds every pair done: no item events, only the step's own.
        step(ws, "rounds/2", "attributes",
             lambda: stats_dict(generate_attributes(ws, AttributesConfig(kind="heuristic", batch_size=16),
                                                  progress=step_progress("pairs"))))
    inner = [e for e in events if e.step == "attributes/pairs"]
    assert [(e.stage, e.round, e.done, e.total) for e in inner] == [
        ("stage1", 1, 16, 40), ("stage1", 1, 32, 40), ("stage1", 1, 40, 40)]
    assert inner[-1].finished and inner[-1].rate is not None
    assert [e.step for e in events if e.round == 2] == ["attributes", "attributes"]
    with within("stage1", 1, "judge"):
        assert step_progress("rules") is None  # nobody listens: callers skip the bookkeeping


@pytest.mark.slow
def test_tasks_on_prefect_worker_threads_report_under_the_flows_step(prefect_api: str) -> None:
    """Prefect copies the context into its worker threads, so a submitted task reports too."""
    from prefect import flow, task

    @task
    def work(n: int) -> int:
        report = step_progress("rows")
        assert report is not None
        report(n, 10)
        return n

    @flow
    def observed() -> list[int]:
        with within("stage2", None, "score"):
            return [f.result() for f in [work.submit(5), work.submit(10)]]

    events: list[ProgressEvent] = []
    with listening(events.append):
        assert observed() == [5, 10]
    assert sorted((e.stage, e.step, e.done) for e in events) == [("stage2", "score/rows", 5),
                                                                ("stage2", "score/rows", 10)]


def _cli(config: Path, api_url: str, home: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="WARNING")
    return subprocess.run([sys.executable, "-m", "flows.cli.main", "curate", "--config", str(config), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_curate_off_a_terminal_prints_one_line_per_step(
    curated_run: dict[str, Any], prefect_api: str, shared_raw: Path, tmp_path: Path
) -> None:
    """A copy of the session's finished run, with round 2's judge step and summary undone: the
    re-run does that step for real and says every other step was done before."""
    config = write_config(shared_raw, tmp_path, "observed")
    shutil.copytree(curated_run["config"].workspace, tmp_path / "observed")
    for undone in ("rounds/2/summary.json", "rounds/2/steps/judge.json"):
        (tmp_path / "observed" / undone).unlink()
    proc = _cli(config, prefect_api, tmp_path / "prefect")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    unexpected = [line for line in lines if not LINE.match(line)]
    assert lines and not unexpected, unexpected
    steps = [line.split("] ", 1)[1].split(" · ")[:2] for line in lines]
    assert len(steps) == len({tuple(s) for s in steps}), "a step printed more than one line"
    judge = next(line for line in lines if "round 2 · judge · " in line)
    assert "pairs/s" in judge and "done before" not in judge
    round1 = [line for line in lines if "] round 1 · " in line]
    assert round1 and all(line.endswith("done before") for line in round1)
    for expected in ("] ingest · ingest · 1/1", "] clean · clean · 1/1", "] export · export · 1/1",
                     "] round 2 · round · 1/1"):
        assert any(expected in line for line in lines), expected
    assert "\x1b[" not in proc.stdout  # no terminal control codes in logs

    as_json = _cli(config, prefect_api, tmp_path / "prefect", "--json")
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    records = [json.loads(line) for line in as_json.stdout.splitlines() if line.startswith("{")]
    assert records[-1]["event"] == "result" and records[-1]["curated"] == curated_run["result"]["selected"]
    assert {r["event"] for r in records[:-1]} == {"progress"}
    assert not [line for line in as_json.stdout.splitlines() if line.strip() and not line.startswith("{")]


def test_on_a_terminal_a_bar_runs_and_finished_steps_stay_above_it() -> None:
    from rich.console import Console

    from flows.progress import rich_view

    screen = io.StringIO()
    with rich_view(Console(file=screen, force_terminal=True, width=120)) as show, listening(show):
        progress("stage1", 1, "silver", 0, None)
        progress("stage1", 1, "silver", 10, 10)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue()).replace("\r", "\n")
    assert "round 1 · silver ━" in text  # the live bar while the step runs
    assert re.search(r"^\[\d\d:\d\d:\d\d\] round 1 · silver · 10/10 · ", text, re.M)


def test_quiet_curate_listens_to_nothing() -> None:
    from flows import progress as module
    from flows.cli.curate import _progress_view

    with _progress_view(quiet=True, as_json=False):
        assert module._listeners == []
    with _progress_view(quiet=False, as_json=True):
        assert len(module._listeners) == 1
    assert module._listeners == []
