"""Errors that help, bugs that show: typos fail at config load, a bug keeps its traceback."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from schemas.config import SynprefConfig
from schemas.errors import ConfigError, SynprefError

REPO = Path(__file__).resolve().parent.parent
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[judges]]\nname = "j"\nkind = "vlm"\n',
         "unknown kind 'vlm' (expected one of vllm, openai, reward-model, rm-workspace, rm-crossfit, rule)"),
        ('[attributes]\nkind = "llm"\n', "unknown kind 'llm' (expected one of heuristic, vllm, openai)"),
        ('[rm]\nkind = "embeding-head"\n', "unknown rm.kind 'embeding-head'"),
        ('[rm]\nhead = "mpl"\n', "unknown rm.head 'mpl' (expected one of linear, mlp)"),
        ('[rm]\nscorer = "vlm"\n', "unknown rm.scorer 'vlm'"),
        ('[rm]\nbf16 = "true"\n', "unknown rm.bf16 'true' (expected one of auto, yes, no)"),
        ('[rm]\nencoder_backend = "onnx"\n', "unknown rm.encoder_backend 'onnx'"),
        ('[embed]\nbackend = "cuda"\n', "unknown embedding backend 'cuda'"),
        ('[index]\nkind = "annoy"\n', "unknown index kind 'annoy' (expected one of auto, flat, ivf"),
        ('[loop]\ngold_from = "humans"\n',
         "unknown loop.gold_from 'humans' (expected one of source-labels, argilla)"),
    ],
)
def test_a_typo_in_a_kind_fails_at_load_with_the_allowed_values(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "synpref.toml"
    config.write_text(f'workspace = "{tmp_path / "ws"}"\n{toml}')
    with pytest.raises(ValueError, match="unknown"):
        SynprefConfig.load(config)
    result = CliRunner().invoke(app, ["status", "-c", str(config)], env=ENV)
    text = " ".join(result.output.split())
    assert result.exit_code == 1
    assert message in text and "Traceback" not in result.output


def test_every_kind_the_shipped_configs_use_loads() -> None:
    for path in REPO.glob("examples/**/*.toml"):
        SynprefConfig.load(path)


def test_user_errors_share_one_base_and_stay_value_errors_where_they_were() -> None:
    from annotation.client import ArgillaUnavailable
    from pipeline.encoders import EmbedError
    from pipeline.index import VectorIndexError
    from pipeline.judges.base import JudgeError
    from pipeline.lease import WorkspaceBusy
    from pipeline.sources.files import SourceReadError
    from pipeline.store import WorkspaceError

    for cls in (ArgillaUnavailable, EmbedError, VectorIndexError, JudgeError, WorkspaceBusy, SourceReadError,
                WorkspaceError, ConfigError):
        assert issubclass(cls, SynprefError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(EmbedError, ValueError)


BUG = """
import flows.cli.data as data
from flows.cli.main import app

def broken(ws):
    raise ValueError("an internal invariant broke")

data.status_tables = broken
app(["status", "-w", {ws!r}])
"""


def test_a_bug_prints_its_traceback_and_a_user_error_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", BUG.format(ws=str(tmp_path / "ws"))], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "an internal invariant broke" in proc.stderr
    assert "broken" in proc.stderr  # the frame that raised is shown
    proc = subprocess.run([sys.executable, "-m", "flows.cli.main", "clean", "-w", str(tmp_path / "ws")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "has no pool yet" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_loop_never_imports_the_cli() -> None:
    """flows/ outside flows/cli/ (and the benchmarks' own commands) compose; only the CLI presents."""
    for path in (REPO / "flows").rglob("*.py"):
        rel = path.relative_to(REPO / "flows")
        if rel.parts[0] in ("cli", "bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("flows.cli"), f"flows/{rel} imports {node.module}"
