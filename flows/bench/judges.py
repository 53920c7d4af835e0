"""Benchmark of this stage; registered on `synpref bench` by register()."""

from __future__ import annotations

import typer


def register(bench_app: typer.Typer) -> None:
    """Add this benchmark's command to `synpref bench`."""
