"""A small real curation run shared by the flow tests: the config, a Prefect test server, the run.

The run is built once per test session (the flow and runner tests both read it), on a small
slice of the real data in ../shared/data/raw.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_CACHE: dict[str, Any] = {}


def small_config_text(shared_raw: Path, workspace: Path) -> str:
    """A curate config over ~70 real pairs: two HH-RLHF splits (human labels), UltraFeedback (AI)."""
    return f"""
workspace = "{workspace}"

[[sources]]
path = "{shared_raw}/hh-rlhf/harmless-base/test.jsonl.gz"
format = "hh-rlhf"
name = "hh-rlhf/harmless-base"
license = "MIT"
limit = 30

[[sources]]
path = "{shared_raw}/hh-rlhf/helpful-base/test.jsonl.gz"
format = "hh-rlhf"
name = "hh-rlhf/helpful-base"
license = "MIT"
limit = 30

[[sources]]
path = "{shared_raw}/ultrafeedback/eval_clean.jsonl"
format = "prompt-chosen-rejected"
name = "ultrafeedback"
license = "MIT"
label_source = "ai"
limit = 12

[clean]
benchmarks = ["{shared_raw}/llmbar/Dataset/LLMBar/Natural/dataset.json"]

[attributes]
enabled = true
kind = "heuristic"

[rm]
kind = "embedding-head"
epochs = 3
hidden = 32
min_steps = 60

[[judges]]
name = "gold-rm"
kind = "rm-workspace"

[[judges]]
name = "rules"
kind = "rule"

[loop]
iterations = 2
seed_size = 12
silver_seed_size = 16
retrieve_max = 10
shard_rows = 20
max_parallel_shards = 2
seed = 3

[stage2]
enabled = true
recycle_flips = true
"""


def write_config(shared_raw: Path, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(small_config_text(shared_raw, folder / name))
    return path


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect test server for the session; subprocesses reach it through PREFECT_API_URL."""
    if "prefect_api" in _CACHE:
        yield _CACHE["prefect_api"]
        return
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        _CACHE["prefect_api"] = PREFECT_API_URL.value()
        yield _CACHE["prefect_api"]
    _CACHE.pop("prefect_api", None)


@pytest.fixture(scope="session")
def curated_run(
    prefect_api: str, shared_raw: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The curate flow, uninterrupted, on the small real sample: its config path and result."""
    if "curated_run" not in _CACHE:
        from flows.curate import curate_flow
        from schemas.config import SynprefConfig

        config_path = write_config(shared_raw, tmp_path_factory.mktemp("curate"), "uninterrupted")
        config = SynprefConfig.load(config_path)
        _CACHE["curated_run"] = {"config_path": config_path, "config": config,
                                 "result": curate_flow(config)}
    return _CACHE["curated_run"]
