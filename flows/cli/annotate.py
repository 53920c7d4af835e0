"""CLI commands of this area; registered on the main app by register()."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the synpref app."""
