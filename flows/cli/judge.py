"""`synpref attributes` and `synpref judge`: the 5-tuple and the judge group over a workspace selection."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.common import (
    ConfigOpt,
    UserError,
    WorkspaceOpt,
    console,
    friendly_errors,
    load_config,
    open_workspace,
    table,
)

PairsOpt = Annotated[Path | None, typer.Option("--pairs", help="File of pair ids: one per line, or "
                                               "a .csv/.parquet with a pair_id column.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="At most this many pairs.")]
SourceOpt = Annotated[list[str] | None, typer.Option("--source", help="Only pairs of this source "
                                                     "(repeatable).")]
LLM_KINDS = ("vllm", "openai")
EXAMPLES_VIEW = "conversation+attributes"


def read_pair_file(path: Path) -> list[str]:
    if not path.exists():
        raise UserError(f"pairs file not found: {path}")
    if path.suffix in (".csv", ".parquet"):
        import polars as pl

        frame = pl.read_csv(path) if path.suffix == ".csv" else pl.read_parquet(path)
        if "pair_id" not in frame.columns:
            raise UserError(f"{path}: no pair_id column (columns: {frame.columns})")
        return frame["pair_id"].cast(str).to_list()
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def select_pairs(ws: Any, pairs: Path | None, limit: int | None, sources: list[str] | None) -> list[str]:
    """The pair ids to work on: a file's (in its order), else the active pool's (in pool order);
    filtered by source, capped by limit. Only the selected ids are collected: the pool is scanned
    with the source filter and the limit pushed down, never listed whole to be cut afterwards."""
    import polars as pl

    from pipeline.pool import cleaned_out

    if not ws.has_table("pool"):
        raise UserError(f"{ws.uri}: the workspace has no pool; ingest a source first")
    if pairs:
        ids = read_pair_file(pairs)
        if sources:
            wanted = pl.Series("pair_id", ids, pl.String)
            keep = (ws.scan("pool").filter(pl.col("source").is_in(sources) & pl.col("pair_id").is_in(
                wanted.implode())).select("pair_id").collect()["pair_id"])
            ids = wanted.filter(wanted.is_in(keep.implode())).to_list()
        return ids[:limit] if limit is not None else ids
    frame = ws.scan("pool").select("pair_id", "source")
    gone = cleaned_out(ws)
    if gone is not None:
        frame = frame.join(gone, on="pair_id", how="anti", maintain_order="left")
    if sources:
        frame = frame.filter(pl.col("source").is_in(sources))
    frame = frame.select("pair_id")
    return (frame if limit is None else frame.head(limit)).collect()["pair_id"].to_list()


def read_judge_configs(path: Path | None, fallback: list[Any]) -> list[Any]:
    """[[judges]] tables from a TOML file (a synpref.toml or a file of judges only)."""
    from schemas.config.judges import JudgeConfig

    if path is None:
        if not fallback:
            raise UserError("no judges configured: pass --judges FILE or add [[judges]] to synpref.toml")
        return fallback
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"judges file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from exc
    entries = data.get("judges")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: no [[judges]] tables")
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(JudgeConfig.model_validate(entry))
        except ValueError as exc:
            raise UserError(f"{path}: judges[{i}]: {exc}") from exc
    return out


def example_count(configs: list[Any], requested: int | None) -> int:
    """How many worked examples to retrieve per pair: `requested`, else (as the loop does) the
    largest `examples` among the LLM judges; 0 when no LLM judge would read them."""
    wanted = [c.examples for c in configs if c.kind in LLM_KINDS]
    if not wanted:
        return 0
    return max(wanted) if requested is None else requested


def retrieve_examples(ws: Any, embed: Any, pair_ids: list[str], k: int) -> dict[str, Any]:
    """Each target's nearest gold pairs as worked examples, the way the loop's judge step gets
    them: (conversation, attributes) embeddings of gold and targets (only missing ones are
    computed), then a nearest-neighbour search over gold."""
    from flows.examples import judge_examples
    from flows.loop_state import labels, training_frame
    from pipeline.embed import embed_pairs

    if k <= 0 or not ws.has_table("gold"):
        return {}
    gold = training_frame(labels(ws, "gold"))["pair_id"].to_list()
    if not gold:
        return {}
    embed_pairs(ws, embed, view=EXAMPLES_VIEW, pair_ids=list(dict.fromkeys([*gold, *pair_ids])))
    return judge_examples(ws, embed, pair_ids, k)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the synpref app."""

    @app.command("attributes")
    @friendly_errors
    def attributes_cmd(
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
        pairs: PairsOpt = None,
        limit: LimitOpt = None,
        source: SourceOpt = None,
        kind: Annotated[str | None, typer.Option(help="heuristic | vllm | openai (default: config)")] = None,
        model: Annotated[str | None, typer.Option(help="Model for the LLM kinds.")] = None,
    ) -> None:
        """Give every selected pair its 5-tuple (category, objectivity, controversiality, ...).

        Without --pairs, --limit or --source the whole active pool is done one partition at a time,
        as the loop does (no id list of the pool is held); a selection is done as one id list."""
        from rich.progress import Progress

        from pipeline.attributes import generate_attributes
        from pipeline.attributes_stage import AttributesStage, run_attributes

        cfg = load_config(config)
        ws = open_workspace(cfg, workspace, write=True)
        overrides = {k: v for k, v in {"kind": kind, "model": model}.items() if v}
        acfg = cfg.attributes.model_copy(update=overrides)
        with Progress(console=console) as bar:
            task = bar.add_task(f"attributes ({acfg.kind})", total=None)

            def report(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            if pairs is None and limit is None and not source:
                stats = run_attributes(ws, AttributesStage(acfg), progress=report)
            else:
                stats = generate_attributes(ws, acfg, select_pairs(ws, pairs, limit, source), progress=report)
        console.print(table("attributes", ["pairs", "generated", "skipped", "retried", "quarantined",
                                           "preverified", "seconds"],
                            [[stats.pairs, stats.generated, stats.skipped, stats.retried, stats.quarantined,
                              stats.preverified, stats.seconds]]))

    @app.command("judge")
    @friendly_errors
    def judge_cmd(
        judges: Annotated[Path | None, typer.Option("--judges", help="TOML file with [[judges]] "
                                                    "(default: the config's judges).")] = None,
        config: ConfigOpt = None,
        workspace: WorkspaceOpt = None,
        pairs: PairsOpt = None,
        limit: LimitOpt = None,
        source: SourceOpt = None,
        round_: Annotated[int, typer.Option("--round", help="Round number stored with judgments.")] = 0,
        seed: Annotated[int, typer.Option(help="Seed of the candidate order.")] = 0,
        examples: Annotated[int | None, typer.Option(
            "--examples", min=0, max=8, help="Nearest human-labeled (gold) pairs shown to the LLM judges "
            "as worked examples, per pair (default: the largest `examples` of the LLM judges, as in "
            "the loop; 0: none).")] = None,
    ) -> None:
        """Judge the selected pairs with the judge group; print verdicts, agreement and position flips.

        LLM judges see each pair's nearest gold pairs as worked examples, as in the loop."""
        from rich.progress import Progress

        from flows.labeling import stored_judgments
        from pipeline.judges import (
            JudgeError,
            aggregate_votes,
            build_judges,
            judge_agreement,
            judge_pairs,
            position_consistency,
        )

        cfg = load_config(config)
        ws = open_workspace(cfg, workspace, write=True)
        configs = read_judge_configs(judges, cfg.judges)
        ids = select_pairs(ws, pairs, limit, source)
        if not ids:
            raise UserError("no pairs selected")
        built = build_judges(configs, ws=ws)
        k = example_count(configs, examples)
        shots: dict[str, Any] = {}
        if k:
            with console.status(f"retrieving up to {k} gold examples per pair"):
                shots = retrieve_examples(ws, cfg.embed, ids, k)
        tasks: dict[str, Any] = {}
        try:
            with Progress(console=console) as bar:
                def progress(name: str, done: int, total: int) -> None:
                    if name not in tasks:
                        tasks[name] = bar.add_task(f"judge {name}", total=total)
                    bar.update(tasks[name], completed=done, total=total)

                stats = judge_pairs(ws, built, ids, round_, seed, examples=shots, progress=progress)
        except JudgeError as exc:
            raise UserError(f"{exc} ({len(exc.partial)} judgments of the failing chunk were stored; "
                            "re-run to continue)") from exc
        finally:
            for j in built:
                j.close()
        names = [c.name for c in configs]
        stored = stored_judgments(ws, ids, round_, names)
        votes = aggregate_votes(stored, {c.name: c.weight for c in configs})
        console.print(table("judging", ["pairs", "with examples", "judgments written", "skipped", "invalid",
                                        "abstained", "seconds"],
                            [[stats.pairs, len(shots), stats.judgments_written, stats.skipped, stats.invalid,
                              stats.abstained, stats.seconds]]))
        counts = votes.group_by("verdict").len().sort("verdict")
        console.print(table("verdicts (vote across judges)", ["verdict", "pairs"], counts.rows()))
        if votes.height:
            console.print(f"mean agreement {votes['agreement'].mean():.3f}; position-inconsistent pairs "
                          f"{votes['position_inconsistent'].sum()} / {votes.height}")
        agree = judge_agreement(stored)
        if agree.height:
            console.print(table("agreement between judges", ["judge_a", "judge_b", "pairs", "agreement"],
                                agree.rows()))
        pos = position_consistency(stored)
        if pos.height:
            console.print(table("position inconsistency (verdict flips with order)",
                                ["judge", "pairs", "inconsistent", "rate"], pos.rows()))
