"""Export: the curated set (gold, silver, stage-2 keeps and flips), the run report, the Hub.

Two things can be exported and the caller always says which: the loop's curated selection
(written to the workspace's `curated` table, and to `out` if given) or, asked for explicitly,
the raw active pool (written to `out` only, so it never replaces what the loop curated).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
import pyarrow as pa
from prefect import flow

from flows.loop_state import STAGE2_DIR, completed_rounds, decisions, labels, round_summaries
from flows.runners import make_task_runner
from flows.stages import prefect_tasks
from pipeline.consistency import curated_selection
from pipeline.export import CURATED, Progress, dataset_card
from pipeline.export_stage import ExportStage, RunTasks, run_export
from pipeline.report import write_report
from pipeline.stage import ROWS_PER_PARTITION
from pipeline.store import Workspace
from schemas.config import SynprefConfig
from schemas.errors import SynprefError

ExportKind = Literal["curation", "pool"]
HF_TOKEN_ENV = "HF_TOKEN"


class ExportError(SynprefError):
    """Nothing to export of the kind asked for, or nowhere to put it."""


@dataclass
class ExportResult:
    """What an export wrote: which kind, how many pairs (relabeled = flipped against the source)."""

    kind: ExportKind
    rows: int
    relabeled: int
    shards: int
    out_dir: str | None
    table: str | None
    counts: dict[str, dict[str, int]]
    card: str

    def describe(self) -> str:
        """The one line that tells the user which of the two exports this is."""
        if self.kind == "curation":
            return f"curated selection of the loop: {self.rows} pairs, {self.relabeled} relabeled"
        return f"raw active pool: {self.rows} pairs"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "relabeled": self.relabeled, "shards": self.shards,
                "out_dir": self.out_dir, "path": self.table, "counts": self.counts}


def loop_has_run(ws: Workspace) -> bool:
    return bool(completed_rounds(ws))


def loop_selection(ws: Workspace, include_flipped: bool = True) -> pl.DataFrame:
    """The loop's curated selection (pipeline.consistency.curated_selection over the workspace)."""
    stage2 = ws.read_json(f"{STAGE2_DIR}/summary.json")
    selection = curated_selection(labels(ws, "gold"), labels(ws, "silver"),
                                  decisions(ws) if stage2 is not None else None)
    if not include_flipped:
        selection = selection.filter(~selection["flipped"])
    return selection


def export_workspace(
    ws: Workspace, kind: ExportKind, out_dir: str | None = None, *, shard_rows: int,
    include_flipped: bool = True, progress: Progress | None = None, run: RunTasks | None = None,
    rows_per_partition: int = ROWS_PER_PARTITION,
) -> ExportResult:
    """Export the loop's curation (table `curated` + `out_dir`) or the raw pool (`out_dir` only), as
    export tasks (pipeline/export_stage.py) in this process or through `run` on an executor."""
    if not ws.has_table("pool"):
        raise ExportError(f"{ws.uri} has no pool yet: run `synpref ingest` first")
    if kind == "pool":
        if out_dir is None:
            raise ExportError("--pool writes the raw active pool to --out only (the workspace's "
                              "`curated` table keeps the loop's curation): pass --out")
        stage = ExportStage("pool", shard_rows=shard_rows, to_table=False)
    else:
        if not loop_has_run(ws):
            raise ExportError(f"no loop has run in {ws.uri}, so there is no curation to export: run "
                              "`synpref curate`, or pass --pool to export the raw active pool")
        stage = ExportStage("loop", shard_rows=shard_rows, include_flipped=include_flipped,
                            use_decisions=ws.read_json(f"{STAGE2_DIR}/summary.json") is not None)

    def card(counts: dict[str, dict[str, int]], rows: int) -> str:
        return export_card(ws, kind, counts, rows, counts["flipped"].get("True", 0))

    # Image pairs carry an `images` column (datasets Image() features); text pairs keep CURATED_SCHEMA.
    done = run_export(ws, stage, card, out_dir=out_dir, run=run, progress=progress,
                      rows_per_partition=rows_per_partition)
    table_name = ws.path(CURATED) if kind == "curation" else None
    return ExportResult(kind, done.rows, done.relabeled, done.shards, out_dir, table_name, done.counts,
                        done.card)


def _size_category(rows: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if rows < bound:
            return name
    return "n>10M"


def export_card(ws: Workspace, kind: ExportKind, counts: dict[str, dict[str, int]], rows: int,
                relabeled: int) -> str:
    """A Hub dataset card: YAML header (licenses, sources, size, data files) and the curation summary
    above pipeline.export's counts per provenance field."""
    licenses = sorted({k.lower() for k in counts["license"] if k != "(none)"}) or ["other"]
    sources = sorted(counts["source"])
    header = ["---", "license:", *[f"- {_yaml(x)}" for x in licenses],
              "pretty_name: synpref preference pairs", "size_categories:",
              f"- {_yaml(_size_category(rows))}", "source_datasets:",
              *[f"- {_yaml(s)}" for s in sources]]
    body = dataset_card(counts, rows).split("---\n", 2)[2]
    base = dataset_card(counts, rows).split("---\n", 2)[1]
    summary = ["## Curation summary", ""]
    if kind == "pool":
        summary += ["The raw active pool (every ingested pair not removed by cleaning), with the sources'",
                    "own labels: no curation loop's decisions are applied.", ""]
    else:
        rounds = round_summaries(ws)
        stage2 = ws.read_json(f"{STAGE2_DIR}/summary.json")
        summary += [f"The curated selection of synpref's loop: {len(rounds)} stage-1 round(s)"
                    + (f", stage 2 ({_outcome(stage2)})" if stage2 else ", no stage 2") + ".",
                    f"{relabeled} of {rows} pairs are relabeled (chosen and rejected swapped against the "
                    "source's label).", ""]
        for r in rounds:
            acc = r.get("gold_accuracy")
            summary.append(f"- round {r['round']}: gold accuracy {acc:.3f}" if isinstance(acc, float)
                           else f"- round {r['round']}: gold accuracy -")
        summary.append("")
    return "\n".join(header) + "\n" + base + "---\n" + "\n".join(summary) + "\n" + body


def _outcome(stage2: dict[str, Any]) -> str:
    outcome = stage2.get("outcome") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(outcome.items())) or "no candidates"


def _yaml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


Upload = Callable[[Any, str, str, bool, str], None]
"""(DatasetDict, card text, repo id, private, token): the one step that talks to the Hub."""


def hub_upload(dataset: Any, card: str, repo_id: str, private: bool, token: str) -> None:
    """Push the data with `datasets`, then the card over the README it writes."""
    from huggingface_hub import DatasetCard

    dataset.push_to_hub(repo_id, private=private, token=token)
    DatasetCard(card).push_to_hub(repo_id, token=token, repo_type="dataset")


def hub_dataset(ws: Workspace, result: ExportResult) -> Any:
    """The exported pairs as a `datasets.DatasetDict` with one `train` split.

    Local shards are converted shard by shard into the `datasets` cache (memory-mapped), so the
    push does not hold the export in memory; other filesystems are read whole.
    """
    import datasets

    files = _local_shards(ws, result)
    if files:
        return datasets.DatasetDict({"train": datasets.Dataset.from_parquet(files)})
    if result.out_dir is not None:
        import fsspec
        import pyarrow.parquet as pq

        fs, root = fsspec.core.url_to_fs(result.out_dir)
        parts = sorted(fs.glob(f"{root}/data/*.parquet"))
        table = pa.concat_tables([pq.read_table(p, filesystem=fs) for p in parts])
    else:
        table = ws.read(CURATED)
    return datasets.DatasetDict({"train": datasets.Dataset(table.replace_schema_metadata(None))})


def _local_shards(ws: Workspace, result: ExportResult) -> list[str]:
    import fsspec

    if result.out_dir is not None:
        fs, root = fsspec.core.url_to_fs(result.out_dir)
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        return sorted(fs.glob(f"{root}/data/*.parquet")) if local else []
    if not ws.is_local:
        return []
    return [str(ws.local_path(CURATED, s["file"])) for s in ws.manifest(CURATED)["shards"]]


def push_to_hub(ws: Workspace, result: ExportResult, repo_id: str, *, private: bool = False,
                upload: Upload | None = None) -> Any:
    """Build the dataset and card from an export and upload them; the token comes from $HF_TOKEN."""
    token = os.environ.get(HF_TOKEN_ENV, "").strip()
    if not token:
        raise ExportError(f"--push-to-hub needs a Hugging Face token in ${HF_TOKEN_ENV}")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ExportError(f"--push-to-hub: expected ORG/NAME, got {repo_id!r}")
    dataset = hub_dataset(ws, result)
    (upload or hub_upload)(dataset, result.card, repo_id, private, token)
    return dataset


@flow(name="export-tasks")
def export_tasks_flow(ws_uri: str, shard_rows: int, include_flipped: bool,
                      rows_per_partition: int = ROWS_PER_PARTITION, kind: ExportKind = "curation",
                      out_dir: str | None = None) -> dict[str, Any]:
    """The curated table (or, `kind` "pool", the raw active pool to `out_dir`) in shards of
    `shard_rows` pairs (export.shard_rows), with its card, by export tasks on this flow's task
    runner; what `ExportResult.to_dict` says, and the card's text."""
    result = export_workspace(Workspace(ws_uri), kind, out_dir, shard_rows=shard_rows,
                              include_flipped=include_flipped, run=prefect_tasks(ws_uri),
                              rows_per_partition=rows_per_partition)
    return {**result.to_dict(), "card": result.card}


def export_on_runner(ws: Workspace, kind: ExportKind, out_dir: str | None, *, shard_rows: int,
                     include_flipped: bool, runner: str, runner_address: str | None = None,
                     workers: int | None = None) -> ExportResult:
    """`synpref export --runner ...`: the export's tasks on a Prefect task runner (local threads,
    Dask or Ray workers), the same files as the export in one process."""
    task_runner = make_task_runner(runner, address=runner_address, workers=workers)
    done = export_tasks_flow.with_options(task_runner=task_runner)(
        ws.uri, shard_rows, include_flipped, kind=kind, out_dir=out_dir)
    return ExportResult(kind, int(done["rows"]), int(done["relabeled"]), int(done["shards"]), done["out_dir"],
                        done["path"], done["counts"], done["card"])


@flow(name="export")
def export_flow(config: SynprefConfig, runner: str = "local", runner_address: str | None = None,
                workers: int | None = None) -> dict[str, Any]:
    ws = Workspace(config.workspace)
    task_runner = make_task_runner(runner, address=runner_address, workers=workers)
    exported = export_tasks_flow.with_options(task_runner=task_runner)(
        ws.uri, config.export.shard_rows, config.export.include_flipped)
    exported.pop("card")  # in the export's README.md; the summary keeps the counts
    paths = write_report(ws, round_summaries(ws), ws.read_json(f"{STAGE2_DIR}/summary.json"),
                         export=exported)
    return {"export": exported, "report": paths.__dict__, "selected": exported["rows"]}
