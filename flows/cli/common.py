"""What every command shares: the console, option types, config loading and clean failures."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from schemas.config import SynprefConfig

# Piped or logged output keeps wide tables whole instead of folding them at 80 columns.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)

F = TypeVar("F", bound=Callable[..., Any])

WorkspaceOpt = Annotated[
    str | None,
    typer.Option("--workspace", "-w", help="Workspace path or fsspec URI (default: the config's)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="synpref.toml to read (default: ./synpref.toml if present)."),
]


class UserError(Exception):
    """An error the user can fix: printed as one clear message, exit code 1, no traceback."""


def load_config(config: Path | None) -> SynprefConfig:
    if config is None:
        default = Path("synpref.toml")
        return SynprefConfig.load(default) if default.exists() else SynprefConfig()
    return SynprefConfig.load(config)


def resolve_workspace(config: SynprefConfig, workspace: str | None) -> str:
    return workspace or config.workspace


def friendly_errors(func: F) -> F:
    """Turn expected failures into a one-line red message and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (UserError, FileNotFoundError, ValueError, PermissionError, ConnectionError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    out = Table(title=title, title_justify="left")
    for c in columns:
        out.add_column(c, justify="right" if c.endswith(("s", "%")) and c != "reason" else "left")
    for r in rows:
        out.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r])
    return out
