"""`synpref bench scale` on a small generated pool: every stage reports its figures."""

from __future__ import annotations

import os
import re

import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from tests import flow_helpers

prefect_api = flow_helpers.prefect_api
pytestmark = pytest.mark.slow


def test_bench_scale_reports_every_stage(prefect_api: str, tmp_path: object) -> None:
    result = CliRunner().invoke(app, ["bench", "scale", "--pairs", "3000", "--rows-per-partition", "1000",
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    figures = dict(re.findall(r"stage=(\S+)\s+seconds=\S+\s+pairs/s=(\d+)", result.output))
    assert set(figures) == {"ingest", "exact-dedup", "decontamination", "export", "total"}
    assert all(int(v) > 0 for v in figures.values())
    cores = dict(re.findall(r"stage=(\S+)\s.*cores busy=([\d.]+)", result.output))
    assert set(cores) == set(figures)  # each stage kept some of the cores busy, never more than exist
    assert all(0 < float(v) <= (os.cpu_count() or 1) + 0.05 for v in cores.values()), cores
    tasks = dict(re.findall(r"stage=(\S+)\s+seconds=\S+\s+pairs/s=\d+\s+tasks=(\d+)", result.output))
    assert int(tasks["exact-dedup"]) >= 3 + 1 and int(tasks["decontamination"]) == 3  # 3 partitions
    assert "'cores'" in result.output  # the machine is printed


def test_bench_tasks_prints_the_cost_of_a_task_and_names_a_runner_that_fails(prefect_api: str) -> None:
    result = CliRunner().invoke(app, ["bench", "tasks", "--runner", "local", "--runner", "nosuch",
                                      "--tasks", "3"], terminal_width=200)
    assert result.exit_code == 0, result.output
    row = re.search(r"│ local\s+│\s+2\s+│\s+3\s+│\s+([\d.]+)\s+│\s+(\d+)\s+│\s+(\d+)\s+│", result.output)
    assert row, result.output
    assert float(row.group(1)) > 0 and int(row.group(2)) >= 0
    assert "nosuch: failed" in result.output and "unknown runner" in result.output


def test_bench_retrieve_reports_both_searches_on_the_same_pool(tmp_path: object) -> None:
    result = CliRunner().invoke(app, ["bench", "retrieve", "--vectors", "3000", "--queries", "40",
                                      "--rows-per-partition", "1000", "--data-dir", str(tmp_path)],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = re.findall(r"3,000 \| (one index|partition tasks) \| ([\d.]+) \| (\d+) \| [\d,]+ \| (\d+)",
                      result.output)
    assert [(r[0], r[2]) for r in rows] == [("one index", "1"), ("partition tasks", "3")]
    assert rows[0][3] == rows[1][3] and int(rows[0][3]) > 40  # both found the same number of pairs
    assert re.search(r"│ 1\.000\s+│", result.output)  # a flat index at this size: exact as well
