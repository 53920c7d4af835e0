"""Shared test setup: offline model loading, the real data in ../shared/data, fixture plugins."""

from __future__ import annotations

import os
import re
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


# Session fixtures that take a minute to start or hold GBs: the finished curate run; the Argilla
# server; vLLM engines and servers (and the tiny models tests build engines from, which flows
# cache in the process that ran them); a local Ray instance. Under `pytest -n 2 --dist loadgroup`
# (`make test`) the tests that share one run in the same test process, so each starts once and
# the engines live in one process, as in a serial run. The end-to-end tests use Argilla and a vLLM
# server together, so both are one group. Other tests go to whichever process is free.
GROUP_FIXTURES = (
    ("services", {"argilla_server", "tiny_judge_engine", "vllm_server", "rm_vllm_scorer", "vlm_engine",
                  "vlm_server", "tiny_vlm", "tiny_causal_lm", "tiny_reward_model", "trained_tiny_rm"}),
    ("curated", {"curated_run"}),
)
RAY_TEST = re.compile(r"(^|_|\[)ray(_|\]|$)")


def xdist_group_of(item: pytest.Item) -> str | None:
    names = set(getattr(item, "fixturenames", ()))
    for group, fixtures in GROUP_FIXTURES:
        if names & fixtures:
            return group
    if item.get_closest_marker("vllm") or item.get_closest_marker("argilla"):
        return "services"
    if RAY_TEST.search(item.name):
        return "ray"
    return module_fixture_group(item)


def module_fixture_group(item: pytest.Item) -> str | None:
    """A group per test module whose tests share a module- or class-scoped fixture: without it
    the two test processes would each build the fixture (a trained model, a written workspace)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    for name in info.names_closure:
        defs = info.name2fixturedefs.get(name)
        if defs and defs[-1].scope in ("module", "class", "package"):
            return f"module-{item.path.stem}"
    return None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Puts each test in its group and, under `--dist loadgroup`, names the group in its node id.

    pytest-xdist 3.8 names the group by assigning `item._nodeid`, which pytest 9.2 no longer reads
    (the node id is derived from `item._id`), so the scheduler would see no group at all.
    """
    # In an xdist worker `dist` reads "no"; xdist keeps `--dist loadgroup` as `option.loadgroup`.
    loadgroup = bool(getattr(config.option, "loadgroup", False)) or config.getoption("dist") == "loadgroup"
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        group = str(mark.args[0]) if mark is not None and mark.args else xdist_group_of(item)
        if group is None:
            continue
        if mark is None:
            item.add_marker(pytest.mark.xdist_group(group))
        if loadgroup and "@" not in item.nodeid:
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(f"{item.nodeid}@{group}")
