"""The whole loop on a local Dask cluster, and on Ray, curates exactly what the local runner curates."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.store import Workspace
from tests import flow_helpers
from tests.flow_helpers import write_config

curated_run = flow_helpers.curated_run
prefect_api = flow_helpers.prefect_api

pytestmark = pytest.mark.slow
COMPARED = {"pool": ["pair_id"], "dropped": ["pair_id"], "gold": ["pair_id"], "silver": ["pair_id"],
            "decisions": ["pair_id", "filter", "round"], "curated": ["pair_id"]}


def part_hashes(ws: Workspace, table: str) -> list[str]:
    return [part["sha256"] for part in ws.manifest(table)["shards"]]


@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_curate_on_workers_curates_what_the_local_runner_curates(
    runner: str, curated_run: dict[str, Any], prefect_api: str, shared_raw: Path, tmp_path: Path
) -> None:
    from flows.curate import curate_flow
    from schemas.config import SynprefConfig

    config = SynprefConfig.load(write_config(shared_raw, tmp_path, f"on-{runner}"))
    result = curate_flow(config, runner=runner)
    local = Workspace(curated_run["config"].workspace)
    remote = Workspace(config.workspace)
    assert result["selected"] == curated_run["result"]["selected"]
    # The curated table's parts are the same bytes, part for part.
    assert part_hashes(remote, "curated") == part_hashes(local, "curated")
    for name, key in COMPARED.items():
        a = pl.from_arrow(remote.read(name)).sort(key)  # type: ignore[union-attr]
        b = pl.from_arrow(local.read(name)).sort(key)  # type: ignore[union-attr]
        assert a.drop("added_at", strict=False).equals(b.drop("added_at", strict=False)), name
    # Clean and judging ran as shard tasks on the workers, not in this process.
    exact = result["clean"]["exact_dedup"]
    assert exact["tasks"] >= 2 and exact["pids"] and os.getpid() not in exact["pids"]
    workers = set(exact["pids"])
    for round_ in (1, 2):
        shards = remote.read_json(f"rounds/{round_}/steps/judge.json")["shards"]
        if shards["shards"]:
            assert shards["worker_pids"] and os.getpid() not in shards["worker_pids"], shards
            workers |= set(shards["worker_pids"])
    if runner == "dask":  # one cluster for the whole run: clean and both rounds ran on the same 2 workers
        assert len(workers) <= 2, workers
