"""What every command shares: the console, option types, config loading, the workspace (with
its run lease for commands that write) and clean failures."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas.config import SynprefConfig
from schemas.errors import ConfigError, SynprefError

if TYPE_CHECKING:
    from pipeline.store import Workspace

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
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", help="Local threads, Dask worker processes or Ray CPUs for the tasks.")]
AddressOpt = Annotated[str | None, typer.Option(
    "--runner-address", help="An existing Dask scheduler or Ray cluster address.")]


def runner_opt(what: str) -> Any:
    """The `--runner` option of a command whose `what` can run as tasks on a task runner."""
    return typer.Option("--runner", help=f"Where {what} run: local | dask | ray (as `curate --runner`).")


class UserError(SynprefError):
    """A command-line mistake: printed as one clear message, exit code 1, no traceback."""


# Failures a user can fix; anything else is a bug and keeps its traceback.
FRIENDLY = (SynprefError, FileNotFoundError, PermissionError, ConnectionError)
_SCOPE: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "synpref_command_scope", default=None)


def load_config(config: Path | None) -> SynprefConfig:
    """The config file (or the defaults); a value that fails validation is a ConfigError."""
    path = config if config is not None else Path("synpref.toml")
    try:
        if config is None and not path.exists():
            return SynprefConfig()
        return SynprefConfig.load(path)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


def resolve_workspace(config: SynprefConfig, workspace: str | None) -> str:
    return workspace or config.workspace


def command_line() -> str:
    """The running command as the user typed it (for the lease's holder)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return " ".join(["synpref", *sys.argv[1:]])
    path = ctx.command_path.split(" ", 1)
    return " ".join(["synpref", *path[1:]])


def open_workspace(config: SynprefConfig, workspace: str | None, *, write: bool = False,
                   needs: Iterable[str] = ()) -> Workspace:
    """The command's workspace, checked to hold `needs` tables. A writing command takes the run
    lease, held until the command returns (a second writer gets an error naming this one)."""
    from pipeline.store import Workspace

    ws = Workspace(resolve_workspace(config, workspace))
    if write:
        hold_lease(ws)
    for name in needs:
        if not ws.has_table(name):
            raise UserError(f"{ws.uri} has no {name} yet" + (": run `synpref ingest` first" if name == "pool"
                                                             else ""))
    return ws


def hold_lease(ws: Workspace) -> None:
    """Take `ws`'s run lease until the current command returns."""
    from pipeline.lease import acquire

    scope = _SCOPE.get()
    if scope is None:
        raise RuntimeError("hold_lease outside a command: decorate the command with @friendly_errors")
    lease = acquire(ws, command_line())
    scope.callback(lease.release)
    if lease.took_over is not None:
        err_console.print(f"[yellow]took over the stale lease of {escape(lease.took_over.describe())}[/]")


def friendly_errors(func: F) -> F:
    """Run a command in a scope that releases its lease, and turn errors a user can fix into a
    one-line red message and exit 1; any other exception is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _SCOPE.get() is not None:
            return func(*args, **kwargs)
        with contextlib.ExitStack() as scope:
            token = _SCOPE.set(scope)
            try:
                return func(*args, **kwargs)
            except FRIENDLY as exc:
                err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
                sys.exit(1)
            finally:
                _SCOPE.reset(token)

    return wrapper  # type: ignore[return-value]


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    out = Table(title=title, title_justify="left")
    for c in columns:
        out.add_column(c, justify="right" if c.endswith(("s", "%")) and c != "reason" else "left")
    for r in rows:
        out.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r])
    return out
