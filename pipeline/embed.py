"""Sentence embeddings of pairs, cached in the workspace by pair_id + model + view.

Two views exist: `conversation` (the whole pair as text: turns, chosen, rejected; used for
near-duplicate removal) and `conversation+attributes` (the same text led by the pair's 5-tuple;
used for retrieval, per the method). Every vector is L2-normalized float32, so an inner product
is a cosine.

The encoder runs on one of several backends (`pipeline.encoders`); `auto` picks the fastest one
that stays within cosine 0.999 of fp32 on this machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from pipeline.covers import scan_meeting
from pipeline.encoders import EmbedError, choose_backend, make_runner
from pipeline.models import resolve_model_path, torch_device
from pipeline.pool import dropped_ids
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig
from schemas.pair import render_conversation

if TYPE_CHECKING:
    from pipeline.stage import Partition

VIEWS = ("conversation", "conversation+attributes")
CHARS_PER_TOKEN = 4
"""Rough English ratio; text beyond what the model reads is cut before tokenizing."""

Progress = Callable[[int, int], None]


@dataclass
class EmbedStats:
    view: str
    model: str
    table: str
    backend: str
    requested: int
    embedded: int
    cached: int
    seconds: float

    @property
    def texts_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


class Encoder:
    """A sentence encoder; `encode` returns L2-normalized float32 vectors, one row per text."""

    def __init__(self, cfg: EmbedConfig | None = None) -> None:
        self.cfg = cfg or EmbedConfig()
        self.model_name = self.cfg.model
        self.model_path = resolve_model_path(self.cfg.model)
        self.device = torch_device(self.cfg.device)
        self.backend = (
            choose_backend(self.model_path, self.device, self.cfg.trust_remote_code)
            if self.cfg.backend == "auto"
            else self.cfg.backend
        )
        self._runner = make_runner(self.model_path, self.device, self.backend, self.cfg.trust_remote_code)
        self.dim = self._runner.dim
        self.max_seq_length = self._runner.max_seq_length

    def __repr__(self) -> str:
        return f"Encoder({self.model_name!r}, backend={self.backend!r}, device={self.device!r})"

    @property
    def char_budget(self) -> int:
        """How many characters of a text the model can still see (the rest is cut)."""
        return min(self.cfg.max_chars, self.max_seq_length * CHARS_PER_TOKEN)

    def encode(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """Embed `texts` (float32, shape (n, dim), rows of unit length)."""
        texts = [t[: self.cfg.max_chars] for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sorting by length keeps padding small; the original order is restored at the end.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        step = self.cfg.batch_size
        for start in range(0, len(texts), step):
            idx = order[start : start + step]
            out[idx] = self._runner.encode([texts[i] for i in idx])
            if progress is not None:
                progress(min(start + step, len(texts)), len(texts))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, np.maximum(norms, 1e-12), out=out)
        return out


# -- what gets embedded -----------------------------------------------------------------------


def attributes_text(attrs: dict[str, Any]) -> str:
    """One compact line of the 5-tuple, placed first so truncation never drops it."""
    desired = ", ".join(attrs.get("desired_attributes") or [])
    guideline = (attrs.get("guideline") or "")[:300]
    return (
        f"Task: {attrs.get('task_category', '')}; {attrs.get('objectivity', '')}; "
        f"controversy {attrs.get('controversiality', '')}. Wants: {desired}. Guideline: {guideline}"
    )


def pair_text(row: dict[str, Any], budget: int, attributes: dict[str, Any] | None = None) -> str:
    """The text of a pool row as the embedder reads it, within `budget` characters.

    The conversation gets half the budget (its latest turns), each response a quarter; a part
    that needs less leaves its share to the others, so short prompts do not waste the window.
    """
    head = attributes_text(attributes) + "\n\n" if attributes else ""
    conversation = render_conversation(row["conversation"])
    chosen, rejected = row["chosen"], row["rejected"]
    conv_len, chosen_len, rejected_len = _share(
        [len(conversation), len(chosen), len(rejected)],
        [0.5, 0.25, 0.25],
        max(budget - len(head) - len("\n\nChosen: \n\nRejected: "), 64),
    )
    conversation = conversation[len(conversation) - conv_len :]
    return f"{head}{conversation}\n\nChosen: {chosen[:chosen_len]}\n\nRejected: {rejected[:rejected_len]}"


def _share(lengths: list[int], weights: list[float], budget: int) -> list[int]:
    """Water-filling: each part gets its weighted share; what a short part leaves goes to the rest."""
    alloc = [0] * len(lengths)
    active = [i for i, n in enumerate(lengths) if n > 0]
    left = budget
    while active and left > 0:
        total = sum(weights[i] for i in active)
        fits = [i for i in active if lengths[i] - alloc[i] <= left * weights[i] / total]
        if not fits:
            for i in active:
                alloc[i] += int(left * weights[i] / total)
            break
        for i in fits:
            left -= lengths[i] - alloc[i]
            alloc[i] = lengths[i]
        active = [i for i in active if i not in fits]
    return alloc


def text_hash(text: str) -> str:
    return xxhash.xxh3_64_hexdigest(text.encode("utf-8"))


# -- the workspace cache ----------------------------------------------------------------------


def model_slug(model: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    if len(slug) > 60 or slug != model.lower():
        slug = f"{slug[-48:].strip('-')}-{xxhash.xxh3_64_hexdigest(model.encode())[:8]}"
    return slug


def embeddings_table(model: str, view: str) -> str:
    """The workspace table holding `model`'s vectors of `view` (e.g. embeddings/<model>--<view>)."""
    _check_view(view)
    return f"embeddings/{model_slug(model)}--{view.replace('+', '-')}"


def embeddings_schema(dim: int, model: str, view: str) -> pa.Schema:
    return pa.schema(
        [
            ("pair_id", pa.string()),
            ("text_hash", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ],
        metadata={
            "synpref.schema": "embeddings",
            "synpref.version": "1",
            "synpref.model": model,
            "synpref.view": view,
            "synpref.dim": str(dim),
        },
    )


def active_pair_ids(ws: Workspace) -> list[str]:
    """Pool pair_ids not removed by any cleaning stage, in pool order."""
    if not ws.has_table("pool"):
        raise EmbedError(f"workspace {ws.uri} has no pool table; ingest a source first")
    pool = ws.scan("pool").select("pair_id")
    gone = dropped_ids(ws)
    if gone.height:
        pool = pool.join(gone.lazy(), on="pair_id", how="anti", maintain_order="left")
    return pool.collect()["pair_id"].to_list()


def embed_pairs(
    ws: Workspace,
    cfg: EmbedConfig,
    view: str = "conversation",
    pair_ids: Iterable[str] | None = None,
    *,
    encoder: Encoder | None = None,
    progress: Progress | None = None,
    chunk_rows: int = 8192,
    rows_per_partition: int = 100_000,
) -> EmbedStats:
    """Embed the pairs (default: the active pool) whose vectors for this model + view are missing.

    A local driver over the sharded stage (pipeline/embed_stage.py): partitions of the pool one
    after another in this process, each writing its vectors as parts in chunks of `chunk_rows`,
    then one commit; a re-run embeds only what is new (or, in the attributes view, pairs whose
    attributes changed). `progress` gets (pairs handled, pairs in the partitions read).
    """
    from pipeline.embed_stage import EmbedStage, run_local

    _check_view(view)
    stage = EmbedStage(cfg, view, chunk_rows=chunk_rows,
                       pair_ids=None if pair_ids is None else frozenset(pair_ids))
    return run_local(ws, stage, rows_per_partition=rows_per_partition, encoder=encoder, progress=progress)


def load_embeddings(
    ws: Workspace, cfg: EmbedConfig, view: str, pair_ids: Iterable[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """The latest vector of each embedded pair (optionally only `pair_ids`), in table order."""
    return read_vectors(ws, embeddings_table(cfg.model, view), pair_ids)


def read_vectors(
    ws: Workspace, table: str, pair_ids: Iterable[str] | None = None, *, shards: Sequence[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Vectors of an embeddings table, one per pair (its last row), streamed shard by shard.

    `shards` limits the read to those shard files (incremental index updates). With `pair_ids`
    the key column is matched part by part, so the process holds one part's keys and the
    matches, not the table's keys (judges' worked examples ask for a few gold pairs per batch).
    """
    if not ws.has_table(table):
        return [], np.zeros((0, 0), dtype=np.float32)
    files = _shard_files(ws, table, shards)
    frame = _rows_of(ws, files, None if pair_ids is None else pa.array(sorted(set(pair_ids)), pa.string()))
    frame = frame.unique("pair_id", keep="last").sort("row")
    dim = _table_dim(ws, table)
    rows = frame["row"].to_numpy()
    out = np.empty((len(rows), dim), dtype=np.float32)
    offset = 0
    filled = 0
    for f in files:
        with ws.fs.open(f, "rb") as fh:
            parquet = pq.ParquetFile(fh)
            for batch in parquet.iter_batches(batch_size=65_536, columns=["vector"]):
                n = batch.num_rows
                lo, hi = np.searchsorted(rows, [offset, offset + n])
                if hi > lo:
                    flat = batch.column(0).values.to_numpy(zero_copy_only=False)
                    block = flat.reshape(n, dim)
                    out[filled : filled + hi - lo] = block[rows[lo:hi] - offset]
                    filled += hi - lo
                offset += n
    return frame["pair_id"].to_list(), out


def _rows_of(ws: Workspace, files: list[str], wanted: pa.Array | None) -> pl.DataFrame:
    """(pair_id, row in the table) of every row, or of the rows whose pair is in `wanted`."""
    frames, offset = [], 0
    for f in files:
        ids = pq.read_table(f, columns=["pair_id"], filesystem=ws.fs).column(0)
        rows = np.arange(offset, offset + len(ids), dtype=np.int64)
        offset += len(ids)
        if wanted is not None:
            hit = np.asarray(pc.is_in(ids, value_set=wanted).to_numpy(zero_copy_only=False), dtype=bool)
            ids, rows = ids.filter(pa.array(hit)), rows[hit]
        frames.append(pl.DataFrame({"pair_id": ids.cast(pa.string()), "row": rows},
                                   schema={"pair_id": pl.String, "row": pl.Int64}))
    return pl.concat(frames) if frames else pl.DataFrame(schema={"pair_id": pl.String, "row": pl.Int64})


def _shard_files(ws: Workspace, table: str, shards: Sequence[str] | None) -> list[str]:
    if shards is None:
        return ws.shard_files(table)
    return [ws.path(table, s) for s in shards]


def _table_dim(ws: Workspace, table: str) -> int:
    files = ws.shard_files(table)
    if not files:
        return 0
    schema = pq.read_schema(files[0], filesystem=ws.fs)
    return int(schema.field("vector").type.list_size)


def vector_table(rows: list[tuple[str, str, str]], vectors: np.ndarray, schema: pa.Schema) -> pa.Table:
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.Table.from_arrays(
        [
            pa.array([r[0] for r in rows], pa.string()),
            pa.array([r[1] for r in rows], pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, dim),
        ],
        schema=schema,
    )


def existing_keys(ws: Workspace, table: str) -> set[tuple[str, str]]:
    if not ws.has_table(table):
        return set()
    keys = ws.read(table, columns=["pair_id", "text_hash"])
    return set(zip(keys.column(0).to_pylist(), keys.column(1).to_pylist(), strict=True))


def _latest_attributes(ws: Workspace, wanted: set[str],
                       partition: Partition | None = None) -> dict[str, dict[str, Any]]:
    """The last attributes row per pair (pairs without attributes are embedded without them);
    with the pool `partition` the pairs come from, only the parts that may hold them are read."""
    if not ws.has_table("attributes") or not ws.row_count("attributes"):
        return {}
    frame = (
        scan_meeting(ws, "attributes", partition)
        .filter(pl.col("pair_id").is_in(list(wanted)))
        .unique("pair_id", keep="last", maintain_order=True)
        .collect()
    )
    return {row["pair_id"]: row for row in frame.iter_rows(named=True)}


def _check_view(view: str) -> None:
    if view not in VIEWS:
        raise EmbedError(f"unknown embedding view {view!r}; choose one of {', '.join(VIEWS)}")
