"""Export: the curated pairs as Parquet shards that preference trainers read as-is, plus a dataset card.

Columns follow TRL's conversational preference format: `prompt` is the message list before the
responses, `chosen` / `rejected` are one-message assistant lists (swapped for flipped pairs), so
`datasets.load_dataset("parquet", data_files=...)` feeds a reward or DPO trainer directly.
Provenance (source, label_source, origin, round, filter, flipped) rides along per row.

A selection with images exports as TRL's vision preference format instead: message contents are
part lists ({"type": "image"} / {"type": "text", "text": ...}) and an `images` column holds the
prompt's images, in order, as `datasets` Image() features (bytes from the workspace store), so
`datasets` decodes them to PIL images. Text-only selections are written exactly as before.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.pool import active_pool
from pipeline.store import Workspace
from schemas.pair import POOL_SCHEMA

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


def export_curated(
    ws: Workspace, selection: pl.DataFrame | None, out_dir: str | None = None, *,
    shard_rows: int = SHARD_ROWS, progress: Progress | None = None,
) -> ExportStats:
    """Write table `curated` (shards of `shard_rows` pairs) + `curated/README.md`, and the same
    shards + card under `out_dir` if given.

    `selection` has pair_id plus flipped, origin, round, filter (defaults fill missing columns);
    None exports the whole active pool with its source labels.
    """
    start = time.perf_counter()
    curated = curated_frame(ws, selection)
    counts = _counts(curated)
    card = dataset_card(counts, curated.height)
    table = curated_table(ws, curated)
    shards = write_curated_table(ws, table, card, shard_rows, progress)
    stats = ExportStats(rows=curated.height, counts=counts, shards=shards)
    if out_dir is not None:
        stats.shards = write_export_dir(table, card, out_dir, shard_rows=shard_rows, progress=progress)
        stats.out_dir = out_dir
    stats.seconds = time.perf_counter() - start
    return stats


def curated_frame(ws: Workspace, selection: pl.DataFrame | None) -> pl.DataFrame:
    """The selected pool pairs in the curated columns (flipped pairs with chosen/rejected swapped)."""
    if selection is None:
        ids = active_pool(ws).select("pair_id").collect()
        selection = ids.with_columns(*[pl.lit(v).alias(k) for k, v in _SELECTION_DEFAULTS.items()])
    if "pair_id" not in selection.columns:
        raise ValueError("export selection needs a pair_id column")
    selection = selection.with_columns(
        *[pl.lit(v).alias(k) for k, v in _SELECTION_DEFAULTS.items() if k not in selection.columns]
    ).select([pl.col(k).cast(t) for k, t in _SELECTION_TYPES.items()]).unique("pair_id", keep="first")
    pool = ws.scan("pool", schema=POOL_SCHEMA).join(selection.lazy(), on="pair_id", how="inner")
    frame = pool.unique("pair_id", keep="first").sort("ingest_seq", "pair_id").collect()
    if frame.height != selection.height:
        missing = selection.join(frame.select("pair_id"), on="pair_id", how="anti")["pair_id"].to_list()
        raise ValueError(
            f"export selection names {len(missing)} pair_id(s) not in the pool, e.g. {missing[:3]}"
        )
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


def write_curated_table(ws: Workspace, table: pa.Table, card: str, shard_rows: int | None,
                        progress: Progress | None = None) -> int:
    """Swap the workspace's `curated` table for `table` (shards of `shard_rows`) with its card;
    returns the shard count."""
    if progress is not None:
        progress("workspace table", 0, table.num_rows)
    ws.replace(CURATED, table, schema=table.schema, shard_rows=shard_rows)
    ws.write_bytes(f"{CURATED}/README.md", card.encode())
    if progress is not None:
        progress("workspace table", table.num_rows, table.num_rows)
    return len(ws.manifest(CURATED)["shards"])


def curated_table(ws: Workspace, frame: pl.DataFrame) -> pa.Table:
    """The Arrow table to write: CURATED_SCHEMA for text, MULTIMODAL_CURATED_SCHEMA with images."""
    if not has_images(frame):
        return frame.to_arrow().cast(CURATED_SCHEMA)
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
    metadata = {**(MULTIMODAL_CURATED_SCHEMA.metadata or {}), b"huggingface": _hf_features(table)}
    return table.replace_schema_metadata(metadata)


def _ext(fmt: str | None) -> str:
    from pipeline.images import EXTENSIONS

    return "." + EXTENSIONS.get((fmt or "").upper(), "png")


def _hf_features(table: pa.Table) -> bytes:
    """`datasets` features JSON with `images` as List(Image()), so readers decode the images."""
    import datasets

    features = datasets.Features.from_arrow_schema(table.schema.remove_metadata())
    features["images"] = datasets.List(datasets.Image())
    return features.arrow_schema.metadata[b"huggingface"]


def write_export_dir(table: pa.Table, card: str, out_dir: str, *, shard_rows: int = SHARD_ROWS,
                     progress: Progress | None = None) -> int:
    """`out_dir/data/train-0000i-of-0000n.parquet` + `out_dir/README.md`, swapped in whole."""
    n = max(1, -(-table.num_rows // shard_rows))
    fs, root = fsspec.core.url_to_fs(out_dir)
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    parent = Path(root).parent if local else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=parent))
    try:
        (staging / "data").mkdir()
        for i in range(n):
            part = table.slice(i * shard_rows, shard_rows)
            buf = io.BytesIO()
            pq.write_table(part, buf, compression="zstd")
            (staging / "data" / f"train-{i:05d}-of-{n:05d}.parquet").write_bytes(buf.getvalue())
            if progress is not None:
                progress("export shards", min((i + 1) * shard_rows, table.num_rows), table.num_rows)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if local:
            _swap_in(staging, Path(root))
        else:
            if fs.exists(root):
                fs.rm(root, recursive=True)
            fs.put(str(staging), root, recursive=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return n


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` by `staging` with renames, so readers see the old export or the new one."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


def _counts(curated: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for column in ("source", "label_source", "license", "origin", "round", "filter", "flipped"):
        grouped = curated.group_by(column).len().sort(["len", column], descending=[True, False])
        out[column] = {(str(k) if k != "" else "(none)"): int(v) for k, v in grouped.iter_rows()}
    if has_images(curated):
        out.update(_image_counts(curated))
    return out


def _image_counts(curated: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Distinct images per source (with its license) and per format, for the card."""
    refs = curated.select("source", "license", pl.col("images").alias("img")).explode("img")
    refs = refs.drop_nulls("img").unnest("img")
    refs = refs.with_columns(key=pl.coalesce("sha256", pl.lit("uri:") + pl.col("uri")))
    out: dict[str, dict[str, int]] = {}
    for name, by in (("image_source", ["source", "license"]), ("image_format", ["format"])):
        grouped = refs.group_by(by).agg(pl.col("key").n_unique().alias("n")).sort(
            ["n", *by], descending=[True, *[False] * len(by)])
        out[name] = {" | ".join(str(v) if v not in ("", None) else "(none)" for v in key): int(n)
                     for *key, n in grouped.iter_rows()}
    return out


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
