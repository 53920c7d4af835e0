"""`synpref bench ...`: throughput per stage with the machine's details (benchmarks, not tests)."""

from __future__ import annotations

import typer

from flows.bench import curation, embed, faults, ingest, judges, lookup, quality, retrieve, rm, scale, tasks

bench_app = typer.Typer(help="Benchmarks: throughput per stage, printed with the machine's details.",
                        no_args_is_help=True)

for module in (ingest, lookup, embed, retrieve, judges, rm, quality, curation, scale, faults, tasks):
    module.register(bench_app)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
