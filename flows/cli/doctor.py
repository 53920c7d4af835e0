"""`synpref doctor`: check every table of a workspace against its manifests.

Every part a manifest lists must exist with its recorded size, sha256 and row count; commands
refuse to read a table where one does not. Part files that no manifest lists (a writer killed
before its commit) are orphans: nobody reads them, so they are counted but do not fail the check.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from flows.cli.common import (
    ConfigOpt,
    UserError,
    WorkspaceOpt,
    console,
    friendly_errors,
    load_config,
    resolve_workspace,
    table,
)


def register(app: typer.Typer) -> None:
    """Add `doctor` to the synpref app."""
    app.command("doctor")(doctor)


@friendly_errors
def doctor(
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    table_name: Annotated[str | None, typer.Option(
        "--table", help="Check only this table (default: every table, nested ones included).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Check every part of every table (exists, size, sha256, rows) and list orphan part files;
    exit 1 when any part is damaged."""
    import fsspec

    from pipeline.store import Workspace
    from pipeline.store_verify import table_names

    uri = resolve_workspace(load_config(config), workspace)
    fs, root = fsspec.core.url_to_fs(uri)
    if not fs.exists(root):
        raise UserError(f"no workspace at {uri}")
    ws = Workspace(uri)
    names = [table_name] if table_name else table_names(ws)
    problems = ws.verify(table_name)
    summary = []
    for name in names:
        try:
            manifest = ws.manifest(name) if ws.has_table(name) else {"shards": [], "rows": 0}
        except ValueError:  # an unreadable manifest is one of the problems listed
            manifest = {"shards": [], "rows": 0}
        mine = [p for p in problems if p.table == name]
        summary.append({"table": name, "parts": len(manifest["shards"]), "rows": int(manifest["rows"]),
                        "damaged": sum(p.damaged for p in mine),
                        "orphans": sum(p.kind == "orphan" for p in mine)})
    damaged = sum(p.damaged for p in problems)
    orphans = sum(p.kind == "orphan" for p in problems)
    stale = sum(p.kind == "delta" for p in problems)  # a Delta view behind; the next commit mends it
    if as_json:
        typer.echo(json.dumps({
            "workspace": ws.uri, "ok": damaged == 0, "tables": summary,
            "damaged": damaged, "orphans": orphans, "stale_delta_logs": stale,
            "problems": [p.as_dict() for p in problems],
        }, indent=2))
    else:
        columns = ["table", "parts", "rows", "damaged", "orphans"]
        console.print(table(escape(f"tables of {ws.uri}"), columns,
                            [[s[c] for c in columns] for s in summary]))
        if problems:
            console.print(table("problems", ["table", "part", "problem", "detail"], [
                [escape(p.table), escape(p.file), p.kind if p.damaged else f"{p.kind} (harmless)",
                 escape(p.detail)] for p in problems]))
        verdict = (f"[bold red]{damaged} damaged part(s)[/]: commands refuse to read those tables"
                   if damaged else "[green]every part matches its manifest[/]")
        lagging = f"; {stale} Delta log(s) behind their manifest" if stale else ""
        console.print(f"{verdict}; {orphans} orphan file(s){lagging}")
    if damaged:
        raise typer.Exit(1)
