"""`synpref rm train | score | eval`: thin commands over pipeline.rm."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from flows.cli.common import (
    ConfigOpt,
    UserError,
    WorkspaceOpt,
    console,
    friendly_errors,
    load_config,
    open_workspace,
    resolve_workspace,
    table,
)

if TYPE_CHECKING:
    import polars as pl

    from pipeline.rm import RewardModel
    from pipeline.store import Workspace

ScorerOpt = Annotated[str | None, typer.Option(
    "--scorer", help="sequence-classifier models: auto | vllm | transformers (default: the config's).")]


def label_frame(ws: Workspace, name: str) -> pl.DataFrame:
    """Labels (pair_id, verdict) from a workspace table, or `pool`: every active pair, labeled as
    its source labels it."""
    import polars as pl

    if name == "pool":
        if not ws.has_table("pool"):
            raise UserError(f"{ws.uri} has no pool yet: run `synpref ingest` first")
        pool = ws.scan("pool").select("pair_id")
        if ws.has_table("dropped"):
            pool = pool.join(ws.scan("dropped").select("pair_id"), on="pair_id", how="anti")
        return pool.unique(maintain_order=True).with_columns(verdict=pl.lit("chosen")).collect()
    if not ws.has_table(name):
        raise UserError(f"{ws.uri} has no table {name!r}; use silver, gold or pool")
    frame = pl.from_arrow(ws.read(name))
    missing = {"pair_id", "verdict"} - set(frame.columns)  # type: ignore[union-attr]
    if missing:
        raise UserError(f"table {name!r} lacks columns {sorted(missing)}")
    return frame.select("pair_id", "verdict")  # type: ignore[union-attr]


def open_model(model: str, workspace: str, scorer: str | None) -> RewardModel:
    """A model trained in a workspace (`rounds/1/rm`), a folder holding rm.json, or any HF
    sequence-classification checkpoint (path or hub id) used as it is."""
    from pipeline.rm import load_rm
    from pipeline.store import Workspace

    ws = Workspace(workspace)
    if ws.exists(f"{model}/rm.json"):
        return load_rm(ws, model, scorer=scorer)
    folder = Path(model)
    if (folder / "rm.json").exists():
        return load_rm(Workspace(folder.resolve().parent), folder.resolve().name, scorer=scorer)
    from pipeline.rm.sequence_classifier import SequenceClassifierRM
    from schemas.config.rm import RMConfig

    cfg = RMConfig(kind="sequence-classifier", base_model=model, scorer=scorer or "auto")
    rm = SequenceClassifierRM(cfg)
    rm.name = model
    return rm


def _accuracy_rows(report: Any) -> list[list[Any]]:
    def cells(a: Any) -> list[Any]:
        return [a.n, f"{a.accuracy:.3f}", f"[{a.low:.3f}, {a.high:.3f}]"]

    rows: list[list[Any]] = []
    if report.overall is not None:
        rows.append(["overall", "", *cells(report.overall)])
    for source, acc in report.by_source.items():
        rows.append([escape(source), "", *cells(acc)])
        subsets = report.by_subset.get(source, {})
        if len(subsets) > 1:
            rows.extend(["", escape(name), *cells(a)] for name, a in subsets.items())
    for key, acc in report.length_bias.items():
        rows.append(["length bias", key.replace("_", " "), *cells(acc)])
    for path, bon in report.best_of_n.items():
        sizes = "/".join(map(str, bon["responses_per_prompt"]))
        rows.append([escape(Path(path).name), f"best-of-{sizes} (chance {bon['chance']:.2f})", bon["n"],
                     f"{bon['accuracy']:.3f}", f"[{bon['low']:.3f}, {bon['high']:.3f}]"])
    return rows


def register(app: typer.Typer) -> None:
    """Add the `rm` command group (train, score, eval) to the synpref app."""
    rm_app = typer.Typer(help="Bradley-Terry reward models: train, score the pool, evaluate.",
                         no_args_is_help=True)
    app.add_typer(rm_app, name="rm")

    @rm_app.command("train")
    @friendly_errors
    def train(
        labels: Annotated[str, typer.Option(
            "--labels", help="Training labels: a workspace table (silver, gold) or `pool` (the source's "
            "own labels).")] = "silver",
        gold: Annotated[str, typer.Option(
            "--gold", help="Labels for checkpoint selection: a table, or `none`.")] = "gold",
        out: Annotated[str, typer.Option("--out", help="Workspace folder for the model.")] = "rm/latest",
        kind: Annotated[str | None, typer.Option(
            "--kind", help="embedding-head | sequence-classifier")] = None,
        base_model: Annotated[str | None, typer.Option(
            "--base-model", help="Encoder or HF backbone.")] = None,
        epochs: Annotated[int | None, typer.Option("--epochs")] = None,
        learning_rate: Annotated[float | None, typer.Option("--lr")] = None,
        batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
        max_length: Annotated[int | None, typer.Option("--max-length")] = None,
        seed: Annotated[int | None, typer.Option("--seed")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Train a reward model on workspace labels; keep the checkpoint with the best gold accuracy."""
        from pipeline.rm import train_rm

        cfg = load_config(config)
        overrides = {"kind": kind, "base_model": base_model, "epochs": epochs, "learning_rate": learning_rate,
                     "batch_size": batch_size, "max_length": max_length, "seed": seed}
        rm_cfg = cfg.rm.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        ws = open_workspace(cfg, workspace, write=True)
        train_labels = label_frame(ws, labels)
        gold_labels = None
        if gold != "none" and (gold != "gold" or ws.has_table("gold")):
            gold_labels = label_frame(ws, gold)
        with console.status(f"training {rm_cfg.kind} on {train_labels.height} labels"):
            result = train_rm(ws, rm_cfg, train_labels, gold_labels, out)
        if result.model is not None:
            result.model.close()
        if as_json:
            console.print_json(json.dumps(result.to_dict(), default=str))
            return
        gold_acc = "-" if result.gold_accuracy is None else f"{result.gold_accuracy:.3f}"
        console.print(table(
            f"Reward model saved to {ws.uri}/{out}",
            ["kind", "train pairs", "gold pairs", "gold accuracy", "best epoch", "seconds", "pair-epochs/s"],
            [[result.kind, result.train_pairs, result.gold_pairs, gold_acc, f"{result.best_epoch:g}",
              f"{result.seconds:.1f}", f"{result.pairs_per_second:.1f}"]],
        ))
        if any(result.truncation.values()):
            console.print(f"truncated inputs: {result.truncation}")
        if result.skipped:
            console.print(f"labels skipped: {result.skipped}")

    @rm_app.command("score")
    @friendly_errors
    def score(
        model: Annotated[str, typer.Argument(help="Workspace folder of a trained model (e.g. rounds/1/rm).")],
        round_: Annotated[int, typer.Option(
            "--round", "-r", help="Round number stored with the scores.")] = 0,
        pair_ids: Annotated[Path | None, typer.Option(
            "--pairs", help="A file of pair_ids, one per line (default: the whole active pool).")] = None,
        model_name: Annotated[str, typer.Option("--model-name", help="Name stored in scores.model.")] = "",
        scorer: ScorerOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Score pairs into the `scores` table; pairs scored before for this round are skipped."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from pipeline.rm import load_rm, score_pairs

        cfg = load_config(config)
        ws = open_workspace(cfg, workspace, write=True, needs=["pool"])
        ids = None
        if pair_ids is not None:
            ids = [line.strip() for line in pair_ids.read_text().splitlines() if line.strip()]
        rm = load_rm(ws, model, scorer=scorer)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"scoring with {model}", total=None)
            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            cuts: Counter[str] = Counter()
            written = score_pairs(ws, rm, round_, ids, model_name, progress=advance, truncation=cuts)
        rm.close()
        console.print(f"scored {written} pairs into {ws.uri}/scores (round {round_})")
        if any(cuts.values()):
            console.print(f"truncated inputs: {dict(sorted(cuts.items()))}")

    @rm_app.command("eval")
    @friendly_errors
    def evaluate_cmd(
        model: Annotated[str, typer.Argument(help="A trained model's workspace folder, a folder with "
                                             "rm.json, or an HF sequence-classification checkpoint.")],
        on: Annotated[list[Path], typer.Option("--on", help="Benchmark file; repeat it.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG plot here.")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON report here.")] = None,
        limit: Annotated[int | None, typer.Option("--limit", help="Pairs read per file at most.")] = None,
        scorer: ScorerOpt = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Accuracy per file, source and subset with bootstrap CIs, length bias and Best-of-N."""
        from pipeline.rm import evaluate, plot_report

        cfg = load_config(config)
        for path in on:
            if not path.exists():
                raise UserError(f"evaluation file not found: {path}")
        rm = open_model(model, resolve_workspace(cfg, workspace), scorer)
        with console.status(f"evaluating {model} on {len(on)} file(s)"):
            report = evaluate(rm, [str(p) for p in on], limit=limit)
        rm.close()
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(report.to_json())
        if plot is not None:
            plot_report(report, plot)
        if as_json:
            console.print_json(report.to_json())
            return
        columns = ["source", "subset", "pairs", "accuracy", "95% CI"]
        console.print(table(f"Reward model {escape(model)}", columns, _accuracy_rows(report)))
        if plot is not None:
            console.print(f"plot: {plot}")
