"""The `synpref` command. Heavy libraries (torch, vllm, faiss) load inside commands, not here,
so `synpref --help` stays instant."""

from __future__ import annotations

import typer

from flows.cli import annotate, bench, curate, data, doctor, embed, judge, rm

app = typer.Typer(
    name="synpref",
    help="Curate preference pairs for reward models: ingest, clean, embed, judge, verify, train, export.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

for module in (data, embed, judge, rm, annotate, curate, bench, doctor):
    module.register(app)

if __name__ == "__main__":
    app()
