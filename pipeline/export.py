"""Export: the curated pairs as Parquet shards that preference trainers read as-is, plus a dataset card.

Columns follow TRL's conversational preference format: `prompt` is the message list before the
responses, `chosen` / `rejected` are one-message assistant lists (swapped for flipped pairs), so
`datasets.load_dataset("parquet", data_files=...)` feeds a reward or DPO trainer directly.
Provenance (source, label_source, origin, round, filter, flipped) rides along per row.

A selection with images exports as TRL's vision preference format instead: message contents are
part lists ({"type": "image"} / {"type": "text", "text": ...}) and an `images` column holds the
prompt's images, in order, as `datasets` Image() features (bytes from the workspace store), so
`datasets` decodes them to PIL images. Text-only selections are written exactly as before.

This module holds the formats (columns, schemas, the card); pipeline/export_stage.py runs the
export as tasks, each over one partition, bucket or shard, so shards hold exactly `shard_rows`
pairs in pair_id order and no process holds the whole export.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa

from pipeline.stage import ROWS_PER_PARTITION
from pipeline.store import Workspace

if TYPE_CHECKING:
    from pipeline.export_stage import RunTasks

CURATED = "curated"
SHARD_ROWS = 50_000
_TURN = pa.struct([("role", pa.string()), ("content", pa.string())])
CURATED_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("prompt", pa.list_(_TURN)),
        ("chosen", pa.list_(_TURN)),
        ("rejected", pa.list_(_TURN)),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("label_source", pa.string()),
        ("license", pa.string()),
        ("origin", pa.string()),
        ("round", pa.int64()),
        ("filter", pa.string()),
        ("flipped", pa.bool_()),
        ("meta", pa.string()),
    ],
    metadata={"synpref.schema": "curated", "synpref.version": "1"},
)
_PART = pa.struct([("type", pa.string()), ("text", pa.string())])
_PART_TURN = pa.struct([("role", pa.string()), ("content", pa.list_(_PART))])
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_MULTIMODAL_FIELDS = [pa.field(f.name, pa.list_(_PART_TURN)) if f.name in ("prompt", "chosen", "rejected")
                      else f for f in CURATED_SCHEMA]
MULTIMODAL_CURATED_SCHEMA = pa.schema(
    [*_MULTIMODAL_FIELDS[:4], pa.field("images", pa.list_(_IMAGE)), *_MULTIMODAL_FIELDS[4:]],
    metadata={"synpref.schema": "curated", "synpref.version": "1", "synpref.modality": "image"},
)
"""Curated pairs with images; schema metadata also carries the `datasets` features (Image())."""
Progress = Callable[[str, int, int], None]
"""Called with (step, pairs written, pairs in all): step is "workspace table" or "export shards"."""
_SELECTION_DEFAULTS = {"flipped": False, "origin": "source-label", "round": 0, "filter": "ingested"}
_SELECTION_TYPES = {"pair_id": pl.Utf8, "flipped": pl.Boolean, "origin": pl.Utf8, "round": pl.Int64,
                    "filter": pl.Utf8}


@dataclass
class ExportStats:
    rows: int = 0
    shards: int = 0
    out_dir: str | None = None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0
    tasks: int = 0


def export_curated(
    ws: Workspace, selection: pl.DataFrame | None, out_dir: str | None = None, *,
    shard_rows: int = SHARD_ROWS, progress: Progress | None = None, run: RunTasks | None = None,
    rows_per_partition: int = ROWS_PER_PARTITION,
) -> ExportStats:
    """Write table `curated` (shards of `shard_rows` pairs) + `curated/README.md`, and the same
    shards + card under `out_dir` if given.

    `selection` has pair_id plus flipped, origin, round, filter (defaults fill missing columns);
    None exports the whole active pool with its source labels. The work runs as export tasks
    (pipeline/export_stage.py): in this process, or through `run` on an executor's workers.
    """
    from pipeline.export_stage import ExportStage, run_export

    start = time.perf_counter()
    stage = ExportStage("pool" if selection is None else "given", shard_rows=shard_rows)
    done = run_export(ws, stage, dataset_card, out_dir=out_dir, selection=selection, run=run,
                      progress=progress, rows_per_partition=rows_per_partition)
    return ExportStats(rows=done.rows, shards=done.shards, out_dir=out_dir, counts=done.counts,
                       seconds=time.perf_counter() - start, tasks=done.tasks)


def normalize_selection(selection: pl.DataFrame) -> pl.DataFrame:
    """(pair_id, flipped, origin, round, filter), defaults filled, one row per pair_id."""
    if "pair_id" not in selection.columns:
        raise ValueError("export selection needs a pair_id column")
    return selection.with_columns(
        *[pl.lit(v).alias(k) for k, v in _SELECTION_DEFAULTS.items() if k not in selection.columns]
    ).select([pl.col(k).cast(t) for k, t in _SELECTION_TYPES.items()]).unique(
        "pair_id", keep="first", maintain_order=True)


def curated_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """Pool rows joined with their selection row, in the curated columns (flipped pairs with
    chosen/rejected swapped, image references in `images` when any prompt has images)."""
    turns = pl.col("conversation").list.eval(
        pl.struct(pl.element().struct.field("role"), pl.element().struct.field("content"))
    )
    extra = [_image_refs(frame)] if has_images(frame) else []
    flipped = pl.col("flipped")
    good = pl.when(flipped).then(pl.col("rejected")).otherwise(pl.col("chosen"))
    bad = pl.when(flipped).then(pl.col("chosen")).otherwise(pl.col("rejected"))

    def assistant(text: pl.Expr) -> pl.Expr:
        return pl.concat_list(pl.struct(pl.lit("assistant").alias("role"), text.alias("content")))

    return frame.select(
        "pair_id", turns.alias("prompt"), assistant(good).alias("chosen"), assistant(bad).alias("rejected"),
        "source", "source_id", "label_source", "license", "origin", "round", "filter", "flipped", "meta",
    ).with_columns(extra)


_REF = pl.Struct({"turn": pl.Int64, "uri": pl.Utf8, "sha256": pl.Utf8, "format": pl.Utf8})


def has_images(frame: pl.DataFrame) -> bool:
    """Whether a curated frame has an `images` column, or a pool frame's conversation an image.

    A curated frame with images does not cast to CURATED_SCHEMA (one column more): write it
    through `curated_table`.
    """
    if "conversation" not in frame.columns:
        return "images" in frame.columns
    inner = getattr(frame.schema["conversation"], "inner", None)
    if not isinstance(inner, pl.Struct) or "images" not in {f.name for f in inner.fields}:
        return False
    counts = frame.select(pl.col("conversation").list.eval(
        pl.element().struct.field("images").list.len()).list.sum())
    return bool(counts.to_series().fill_null(0).gt(0).any())


def _image_refs(frame: pl.DataFrame) -> pl.Series:
    """Per pair, its prompt's images in order, each with the index of the turn that carries it."""
    rows = [[{"turn": t, "uri": i["uri"], "sha256": i["sha256"], "format": i.get("format")}
             for t, m in enumerate(conv) for i in (m.get("images") or [])]
            for conv in frame["conversation"].to_list()]
    return pl.Series("images", rows, dtype=pl.List(_REF))


def curated_table(ws: Workspace, frame: pl.DataFrame, images: bool | None = None) -> pa.Table:
    """The Arrow table to write: CURATED_SCHEMA for text, MULTIMODAL_CURATED_SCHEMA with images.

    `images` forces the schema (every shard of one export has the same one); None: from `frame`.
    """
    if not (has_images(frame) if images is None else images):
        return frame.to_arrow().cast(CURATED_SCHEMA)
    if "images" not in frame.columns:
        frame = frame.with_columns(pl.lit([], dtype=pl.List(_REF)).alias("images"))
    from pipeline.images import read_image_bytes

    def parts(turns: list[dict], refs: list[dict]) -> list[dict]:
        out = []
        for t, turn in enumerate(turns):
            content: list[dict] = [{"type": "image", "text": None} for r in refs if r["turn"] == t]
            content.append({"type": "text", "text": turn["content"]})
            out.append({"role": turn["role"], "content": content})
        return out

    def image(ref: dict) -> dict:
        if not ref.get("sha256"):
            raise ValueError(f"image {ref.get('uri')} was never fetched: it has no stored bytes to export")
        data = read_image_bytes(ws, ref["sha256"], ref.get("format"))
        return {"bytes": data, "path": ref["sha256"] + _ext(ref.get("format"))}

    columns: dict[str, list] = {"prompt": [], "chosen": [], "rejected": [], "images": []}
    for prompt, chosen, rejected, refs in frame.select("prompt", "chosen", "rejected", "images").iter_rows():
        columns["prompt"].append(parts(prompt, refs))
        columns["chosen"].append(parts(chosen, []))
        columns["rejected"].append(parts(rejected, []))
        columns["images"].append([image(r) for r in sorted(refs, key=lambda r: r["turn"])])
    rest = frame.drop("prompt", "chosen", "rejected", "images").to_arrow()
    data = {name: (pa.array(columns[name], MULTIMODAL_CURATED_SCHEMA.field(name).type) if name in columns
                   else rest.column(name)) for name in MULTIMODAL_CURATED_SCHEMA.names}
    table = pa.Table.from_pydict(data).cast(MULTIMODAL_CURATED_SCHEMA)
    return table.replace_schema_metadata(curated_schema(True).metadata)


def curated_schema(images: bool) -> pa.Schema:
    """The schema of every shard of an export, with the `datasets` features when it has images."""
    if not images:
        return CURATED_SCHEMA
    metadata = {**(MULTIMODAL_CURATED_SCHEMA.metadata or {}),
                b"huggingface": _hf_features(MULTIMODAL_CURATED_SCHEMA.empty_table())}
    return MULTIMODAL_CURATED_SCHEMA.with_metadata(metadata)


def _ext(fmt: str | None) -> str:
    from pipeline.images import EXTENSIONS

    return "." + EXTENSIONS.get((fmt or "").upper(), "png")


def _hf_features(table: pa.Table) -> bytes:
    """`datasets` features JSON with `images` as List(Image()), so readers decode the images."""
    import datasets

    features = datasets.Features.from_arrow_schema(table.schema.remove_metadata())
    features["images"] = datasets.List(datasets.Image())
    return features.arrow_schema.metadata[b"huggingface"]


def image_counts(refs: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Distinct images per source (with its license) and per format, for the card; `refs` has
    one row per (source, license, format, key) an exported prompt uses."""
    out: dict[str, dict[str, int]] = {}
    for name, by in (("image_source", ["source", "license"]), ("image_format", ["format"])):
        grouped = refs.group_by(by).agg(pl.col("key").n_unique().alias("n")).sort(
            ["n", *by], descending=[True, *[False] * len(by)])
        out[name] = {" | ".join(str(v) if v not in ("", None) else "(none)" for v in key): int(n)
                     for *key, n in grouped.iter_rows()}
    return out


def image_refs(curated: pl.DataFrame) -> pl.DataFrame:
    """(source, license, format, key) of every image a curated frame's prompts use, distinct."""
    refs = curated.select("source", "license", pl.col("images").alias("img")).explode("img")
    refs = refs.drop_nulls("img").unnest("img")
    refs = refs.with_columns(key=pl.coalesce("sha256", pl.lit("uri:") + pl.col("uri")))
    return refs.select("source", "license", "format", "key").unique()


def dataset_card(counts: dict[str, dict[str, int]], rows: int) -> str:
    """A Hugging Face dataset card: YAML header (configs, license) and the counts per provenance field."""
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*.parquet",
        "task_categories:",
        "- text-classification",
        "tags:",
        "- preference",
        "- reward-modeling",
        "- synpref",
        "---",
        "",
        "# Curated preference pairs",
        "",
        f"{rows} pairs curated by synpref. `prompt`, `chosen` and `rejected` are message lists",
        "(TRL's conversational preference format): load them with",
        '`datasets.load_dataset("parquet", data_files="data/*.parquet")` and train a reward model or',
        "DPO on them directly. `flipped` pairs had their original label reversed by curation; their",
        "`chosen` is the source's rejected response.",
        "",
    ]
    titles = {"source": "Pairs per source", "label_source": "Pairs per original label source",
              "origin": "Pairs per label origin", "round": "Pairs per round", "filter": "Pairs per filter",
              "flipped": "Flipped labels", "license": "Pairs per license (as given at ingest)"}
    for column, title in titles.items():
        lines += [f"## {title}", "", f"| {column} | pairs |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in counts.get(column, {}).items()]
        lines.append("")
    if "image_source" in counts:
        lines += ["## Images", "", "Prompts carry images: message contents are part lists and `images` holds",
                  "them in order as `datasets` Image() features (TRL's vision preference format).",
                  "Image licenses are the source's license as given at ingest; check each source's",
                  "terms.", "",
                  "| source | license | images |", "|---|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in counts["image_source"].items()]
        lines += ["", "| format | images |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in counts.get("image_format", {}).items()]
        lines.append("")
    return "\n".join(lines)
