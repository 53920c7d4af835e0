"""The production stack file and the Prefect deployment file: valid, complete, no secrets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy" / "stack.env.example"


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever this machine has."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_stack_has_every_service_the_loop_talks_to() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"argilla", "argilla-worker", "opensearch", "postgres", "redis", "prefect-server",
            "prefect-worker", "vllm-judge", "vllm-judge-2"} <= set(services)
    # The worker trains and scores the reward models in-process, so it holds a GPU too.
    for gpu_service in ("vllm-judge", "vllm-judge-2", "prefect-worker"):
        devices = services[gpu_service]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert services["argilla"]["environment"]["ARGILLA_SEARCH_ENGINE"] == "opensearch"


def test_stack_sets_only_variables_synpref_reads() -> None:
    """A SYNPREF_* variable in the stack is one synpref reads: no setting that does nothing."""
    import re

    text = COMPOSE.read_text()
    code = "\n".join(p.read_text() for d in ("flows", "pipeline", "annotation", "schemas")
                     for p in (REPO / d).rglob("*.py"))
    names = set(re.findall(r"^\s+(SYNPREF_[A-Z_]+):", text, flags=re.M))
    assert not sorted(n for n in names if n not in code), "variables nothing reads"


def test_stack_file_holds_no_secrets() -> None:
    text = COMPOSE.read_text()
    assert "change-me" not in text
    assert "${ARGILLA_API_KEY" in text and "${POSTGRES_PASSWORD" in text


@pytest.mark.skipif(compose_command() is None, reason="no docker compose client on this machine")
def test_docker_compose_config_validates() -> None:
    cmd = compose_command()
    assert cmd is not None
    ok = subprocess.run([*cmd, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "-q"],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    # Without the env file the stack refuses to start instead of running with empty secrets.
    missing = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                             cwd=REPO / "deploy")
    assert missing.returncode != 0
    assert "set " in missing.stderr


def test_prefect_yaml_deploys_the_curate_flow() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    entrypoints = {d["entrypoint"] for d in spec["deployments"]}
    assert entrypoints == {"flows/deploy.py:curate_from_config"}
    module, func = "flows/deploy.py:curate_from_config".split(":")
    import importlib

    flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
    assert flow.name == "synpref-curate-from-config"
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {"synpref"}
