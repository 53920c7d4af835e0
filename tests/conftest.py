"""Shared test setup: offline model loading, the real data in ../shared/data, fixture plugins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.vllm_server",
    "tests.fixtures.argilla_server",
    "tests.fixtures.rm_engines",
    "tests.fixtures.clusters",
]


def find_shared_raw() -> Path:
    """The real preference data: $SYNPREF_SHARED_DATA, else a `shared/data/raw` beside a parent."""
    env = os.environ.get("SYNPREF_SHARED_DATA")
    candidates = [Path(env)] if env else []
    for parent in [REPO, *REPO.parents]:
        candidates.append(parent / "shared" / "data" / "raw")
        candidates.append(parent.parent / "shared" / "data" / "raw")
    candidates.append(Path("/work/shared/data/raw"))
    for c in candidates:
        if (c / "hh-rlhf").is_dir():
            return c
    raise RuntimeError("the shared preference data was not found; set SYNPREF_SHARED_DATA")


@pytest.fixture(scope="session")
def shared_raw() -> Path:
    return find_shared_raw()


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep Hugging Face / datasets caches out of the home directory."""
    cache = tmp_path_factory.mktemp("hf-cache")
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache / "datasets"))
