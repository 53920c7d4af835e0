"""Semantic dedup as a sharded stage: k-means cells in groups, one task per group, a merge by rank.

Phases, each a set of tasks that write their own scratch files under `_shuffle/semantic-dedup/`
and return receipts (the driver holds receipts and counts, never ids or vectors):

1. sample (one task per pool partition): the partition's active pairs whose pair_id hashes into
   a fixed fraction, with their vectors (read from the embeddings table for those ids only);
2. train (one task): a spherical k-means (FAISS, seed 0, one thread) on at most `sample_rows`
   of them, taken in pair_id order, so the cells do not depend on partitions or workers. There
   are as many k-means cells as the one-process search makes for the whole pool (about
   sqrt(cells_probed * N)), at least one per group; past `flat_cells` cells the k-means runs in
   two levels (coarse cells, then cells inside each: `semantic_dedup_cells.train_cells`), which
   keeps this one task small at any pool size; `cells` groups of consecutive cell numbers
   (about `cell_rows` memberships each) are the reduce tasks;
3. map (one task per partition): each vector's `cells_probed` nearest cells (ties broken in
   float64 by cell number; the nearest is its own cell), the vector written, with its pair's keep
   rank and those cells, to the group of each of them;
4. reduce (one task per group): up to `exact_max` rows (or on a GPU), the k-NN search of
   `pipeline.semantic_dedup` over the group's rows (exact up to `exact_max`); beyond, on the CPU,
   its cell search for the group's cells: each row that probes one of them against the rows
   whose own cell it is. Every candidate is re-checked with the exact float32 cosine; the group
   writes its edges (worse -> better pair, cosine). An edge two groups share may be written by
   both (the merge keeps it once);
5. merge (one task): the keep-by-rank greedy of `pipeline.semantic_dedup` over every group's
   edges in the global keep order (human labels, then ingest_seq, then pair_id), written as one
   part of `dropped`; the driver commits it once.

Why fine cells in groups rather than a few coarse cells: the candidates are then those of the
one-process search (each vector against the members of its `cells_probed` nearest cells of a
k-means of the same size over the whole pool), whichever group compares them. A few coarse cells
(20 for 1M vectors) split near-duplicates: a vector's similarity to a coarse centroid that
averages a hundred topics is about 0.07, and a copy at cosine 0.98 moves it by about as much as
the gap between a vector's nearest cells, so 31 of 10,000 planted copies shared none of their
original's two nearest coarse cells. And whether a pair is dropped depends on whether its better
neighbour is kept, a chain that can cross groups, so no group decides alone. The merge holds only
the edges (pairs within the threshold: about the drops), never the pool's ids or vectors, and the
greedy sees them in one global order, so the result does not depend on which group ran first, on
the runner, the worker count or the partition size.
"""

from __future__ import annotations

import io
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from pipeline.embed import embeddings_table
from pipeline.images import IMAGES
from pipeline.index import gpu_count
from pipeline.parts import Receipt, commit_keyed_parts, discard, write_part
from pipeline.semantic_dedup import (
    CANDIDATE_SLACK,
    STAGE,
    VIEW,
    cell_candidates,
    cell_count,
    cosine,
    near_pairs,
)
from pipeline.semantic_dedup_cells import (
    EDGE_SCHEMA,
    FLAT_CELLS,
    assign_cells,
    partition_vectors,
    rank_key,
    resolve,
    sample_slot,
    train_cells,
)
from pipeline.stage import (
    ROWS_PER_PARTITION,
    SHUFFLE,
    Partition,
    _Timed,
    dropped_rows,
    plan_partitions,
    read_partition,
)
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig, IndexConfig, SemanticDedupConfig
from schemas.pair import DROPPED_SCHEMA

CELL_ROWS = 100_000
"""Memberships per group of k-means cells (about): the reduce task's vectors."""
SAMPLE_ROWS = 131_072
"""At most this many vectors train the k-means."""
SAMPLE_PER_CELL = 64
"""Sampled vectors per k-means cell, as the one-process search trains its cells."""

Call = tuple[str, tuple[Any, ...]]
RunCalls = Callable[["SemanticDedupStage", list[Call]], list[Receipt]]
"""Runs a phase's calls (method name, arguments) as tasks and returns their receipts in order."""


def _ipc(frame: pl.DataFrame) -> bytes:
    return frame.write_ipc(None).getvalue()


def _matrix(frame: pl.DataFrame, dim: int) -> np.ndarray:
    if not frame.height:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(frame["vector"].to_numpy(), dtype=np.float32).reshape(frame.height, dim)


@dataclass(frozen=True)
class SemanticDedupStage:
    """Near-duplicates of the active pool by the conversation-view vectors of `embed`'s model."""

    embed: EmbedConfig
    dedup: SemanticDedupConfig = field(default_factory=SemanticDedupConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    cell_rows: int = CELL_ROWS
    sample_rows: int = SAMPLE_ROWS
    cells: int = 0
    """Groups of k-means cells: the reduce tasks."""
    fine: int = 0
    """k-means cells (at most; the train task may make fewer, from a small sample)."""
    flat_cells: int = FLAT_CELLS
    """Up to this many cells one k-means trains them; beyond, a coarse k-means then one per coarse cell."""
    pool_rows: int = 0
    sample_fraction: float = 1.0
    token: str = ""

    @property
    def table(self) -> str:
        return embeddings_table(self.embed.model, VIEW)

    @property
    def scratch(self) -> str:
        return f"{SHUFFLE}/{STAGE}/{self.token}"

    @property
    def probed(self) -> int:
        return max(1, self.dedup.cells_probed)

    def planned(self, ws: Workspace) -> SemanticDedupStage:
        """This stage sized for the pool's rows (from the manifest: the same for any partitioning)."""
        rows = ws.row_count("pool") if ws.has_table("pool") else 0
        cells = max(1, math.ceil(self.probed * rows / max(1, self.cell_rows)))
        fine = max(cells, cell_count(rows, self.probed))
        sample = min(self.sample_rows, max(fine * SAMPLE_PER_CELL, 4096))
        return replace(self, cells=cells, fine=fine, pool_rows=rows, sample_rows=sample,
                       token=uuid.uuid4().hex[:12], sample_fraction=min(1.0, 2.0 * sample / max(rows, 1)))

    def group_of(self, fine: np.ndarray, trained: int) -> np.ndarray:
        """The group (reduce task) of each k-means cell number: consecutive numbers together."""
        return np.asarray(fine, np.int64) * self.cells // max(1, trained)

    # -- reading one partition -----------------------------------------------------------------

    def _rows(self, ws: Workspace, partition: Partition) -> tuple[pl.DataFrame, int]:
        """The partition's active text pairs that have a vector: (pair_id, rank, vector), and how
        many active pairs it examined. Image pairs are left out (pipeline.clean_images' work)."""
        images = ws.has_table(IMAGES) and bool(ws.row_count(IMAGES))
        columns = ["pair_id", "label_source", "ingest_seq", *(["conversation"] if images else [])]
        frames = list(read_partition(ws, partition, columns))
        if not frames:
            return pl.DataFrame(schema={"pair_id": pl.Utf8, "rank": pl.Int64}), 0
        rows = pl.concat(frames, how="vertical_relaxed").unique("pair_id", keep="first", maintain_order=True)
        examined = rows.height
        if images:
            per_turn = pl.element().struct.field("images").list.len()
            count = pl.col("conversation").list.eval(per_turn).list.sum()
            rows = rows.filter(count.fill_null(0) == 0)
        return rows.select("pair_id", rank=rank_key(rows)), examined

    def _vectors(self, ws: Workspace, ids: pl.Series, partition: Partition) -> pl.DataFrame:
        """(pair_id, vector) of `ids` (of `partition`), the latest row of each, in table order."""
        if not len(ids) or not ws.has_table(self.table) or not ws.row_count(self.table):
            return pl.DataFrame(schema={"pair_id": pl.Utf8})
        frames = partition_vectors(ws, self.table, ids, partition)
        if not frames:
            return pl.DataFrame(schema={"pair_id": pl.Utf8})
        return pl.concat(frames).unique("pair_id", keep="last", maintain_order=True)

    # -- phases ----------------------------------------------------------------------------------

    def run_sample(self, ws: Workspace, partition: Partition) -> Receipt:
        """The partition's sampled vectors as one scratch file."""
        timer = _Timed()
        rows, examined = self._rows(ws, partition)
        cut = int(self.sample_fraction * (1 << 32))
        picked = rows.filter(sample_slot() < cut) if self.sample_fraction < 1.0 else rows
        vectors = self._vectors(ws, picked["pair_id"], partition)
        if vectors.height:
            ws.write_bytes(f"{self.scratch}/sample/part-{partition.index:06d}.arrow", _ipc(vectors))
        return timer.receipt(STAGE, partition.index, examined, [], phase="sample", sampled=vectors.height)

    def run_train(self, ws: Workspace) -> Receipt:
        """The cells' centroids from the sample (one thread, seed 0: the same on every machine)."""
        timer = _Timed()
        folder = f"{self.scratch}/sample"
        frames = [pl.read_ipc(ws.read_bytes(f"{folder}/{n}")) for n in ws.listdir(folder)]
        sample = pl.concat(frames).sort("pair_id").head(self.sample_rows) if frames else pl.DataFrame()
        if not sample.height:
            return timer.receipt(STAGE, 0, 0, [], phase="train", cells=0, fine=0, coarse=0, dim=0, sampled=0)
        dim = int(sample["vector"].dtype.size)  # type: ignore[attr-defined]
        vectors = _matrix(sample, dim)
        cells = min(self.fine, len(vectors))
        centroids = train_cells(vectors, cells, self.index.train_iterations, self.flat_cells)
        coarse = math.ceil(math.sqrt(cells)) if cells > max(1, self.flat_cells) else 0
        buffer = io.BytesIO()
        np.save(buffer, centroids)
        ws.write_bytes(f"{self.scratch}/centroids.npy", buffer.getvalue())
        groups = len(np.unique(self.group_of(np.arange(len(centroids)), len(centroids))))
        return timer.receipt(STAGE, 0, 0, [], phase="train", cells=groups, fine=len(centroids), coarse=coarse,
                             dim=dim, sampled=len(vectors))

    def _centroids(self, ws: Workspace) -> np.ndarray:
        return np.load(io.BytesIO(ws.read_bytes(f"{self.scratch}/centroids.npy")))

    def run_map(self, ws: Workspace, partition: Partition) -> Receipt:
        """Each of the partition's vectors, with its `cells_probed` nearest cells, to the group of
        each of them: one scratch file per group."""
        timer = _Timed()
        centroids = self._centroids(ws)
        rows, examined = self._rows(ws, partition)
        vectors = self._vectors(ws, rows["pair_id"], partition)
        keyed = rows.join(vectors, on="pair_id", how="inner", maintain_order="left")
        written: list[int] = []
        if keyed.height:
            matrix = _matrix(keyed, centroids.shape[1])
            probes = assign_cells(matrix, centroids, self.probed)
            groups = self.group_of(probes, len(centroids))
            keyed = keyed.with_columns(cells=pl.Series(probes.astype(np.int32)),
                                       group=pl.Series(groups.astype(np.int32)).arr.to_list())
            exploded = (keyed.with_row_index("row").explode("group")
                        .unique(["row", "group"], keep="first", maintain_order=True).drop("row"))
            by_group = exploded.partition_by("group", as_dict=True, maintain_order=True)
            for (group,), members in by_group.items():
                path = f"{self.scratch}/cell-{int(group):05d}/map-{partition.index:06d}.arrow"  # type: ignore[call-overload]
                ws.write_bytes(path, _ipc(members.drop("group")))
                written.append(int(group))  # type: ignore[call-overload]
        return timer.receipt(STAGE, partition.index, examined, [], phase="map", considered=keyed.height,
                             without_vector=rows.height - keyed.height, cells=sorted(written))

    def run_reduce(self, ws: Workspace, cell: int) -> Receipt:
        """The edges within the threshold that one group's search finds (`cell`: the group)."""
        timer = _Timed()
        folder = f"{self.scratch}/cell-{cell:05d}"
        frames = [pl.read_ipc(ws.read_bytes(f"{folder}/{n}")) for n in ws.listdir(folder)]
        members = pl.concat(frames).sort("rank", "pair_id")
        dim = int(members["vector"].dtype.size)  # type: ignore[attr-defined]
        vectors = _matrix(members, dim)
        if len(vectors) <= self.dedup.exact_max or (self.index.use_gpu != "no" and gpu_count() > 0):
            a, b, how = near_pairs(vectors, self.dedup.threshold, self.index, exact_max=self.dedup.exact_max)
        else:
            trained = len(self._centroids(ws))
            mine = np.flatnonzero(self.group_of(np.arange(trained), trained) == cell)
            assign = np.stack(members["cells"].to_numpy()).astype(np.int64).reshape(len(vectors), -1)
            a, b = cell_candidates(vectors, self.dedup.threshold - CANDIDATE_SLACK, assign, trained, mine)
            how = f"{len(mine)} of {trained} k-means cells, {assign.shape[1]} probed"
        # rows are in keep order, so the higher row of a pair is the worse one
        edges = np.unique(np.stack([np.maximum(a, b), np.minimum(a, b)], axis=1), axis=0) if len(a) \
            else np.zeros((0, 2), np.int64)
        worse, better = edges[:, 0], edges[:, 1]
        sims = cosine(vectors[worse], vectors[better]) if len(edges) else np.zeros(0, np.float32)
        close = sims >= np.float32(self.dedup.threshold)
        worse, better, sims = worse[close], better[close], sims[close]
        if len(worse):
            ids, ranks = members["pair_id"], members["rank"]
            found = pl.DataFrame({"worse": ids.gather(worse), "better": ids.gather(better),
                                  "worse_rank": ranks.gather(worse), "better_rank": ranks.gather(better),
                                  "similarity": sims}, schema=EDGE_SCHEMA)
            ws.write_bytes(f"{self.scratch}/edges/cell-{cell:05d}.arrow", _ipc(found))
        return timer.receipt(STAGE, cell, 0, [], phase="reduce", members=members.height, edges=len(worse),
                             search=how)

    def run_merge(self, ws: Workspace) -> Receipt:
        """The keep-by-rank greedy over every cell's edges; the drops as one part of `dropped`."""
        timer = _Timed()
        folder = f"{self.scratch}/edges"
        names = ws.listdir(folder)
        edges = pl.concat([pl.read_ipc(ws.read_bytes(f"{folder}/{n}")) for n in names]) if names \
            else pl.DataFrame(schema=EDGE_SCHEMA)
        drops = resolve(edges)
        parts: list[Receipt] = []
        if drops.height:
            detail = json.dumps({"threshold": self.dedup.threshold, "model": self.embed.model, "view": VIEW})
            decided = drops.with_columns(reason=pl.lit(f"cosine >= {self.dedup.threshold} to a kept pair"),
                                         similarity=pl.col("similarity").cast(pl.Float64),
                                         detail=pl.lit(detail))
            parts.append(write_part(ws, "dropped", dropped_rows(STAGE, decided)))
        groups = drops["kept_pair_id"].n_unique() if drops.height else 0
        return timer.receipt(STAGE, 0, 0, parts, phase="merge", edges=edges.height, groups=groups)

    def cleanup(self, ws: Workspace) -> None:
        if self.token:
            ws.remove(self.scratch)


def run_in_process(ws: Workspace) -> RunCalls:
    """Calls one after another in this process (the local driver)."""

    def run(stage: SemanticDedupStage, calls: list[Call]) -> list[Receipt]:
        return [getattr(stage, method)(ws, *args) for method, args in calls]

    return run


def run_semantic_dedup(ws: Workspace, stage: SemanticDedupStage, *, run: RunCalls | None = None,
                       rows_per_partition: int = ROWS_PER_PARTITION) -> dict[str, Any]:
    """The stage's phases as tasks (`run`: in this process by default), then one commit of
    `dropped`; its figures (counts, tasks, PIDs, peak RSS of the tasks)."""
    started = time.perf_counter()
    run = run or run_in_process(ws)
    partitions = plan_partitions(ws, rows_per_partition)
    stage = stage.planned(ws)
    receipts: list[Receipt] = []
    try:
        receipts += run(stage, [("run_sample", (p,)) for p in partitions])
        trained = run(stage, [("run_train", ())])
        receipts += trained
        if trained[0]["cells"]:
            maps = run(stage, [("run_map", (p,)) for p in partitions])
            receipts += maps
            cells = sorted({c for r in maps for c in r["cells"]})
            receipts += run(stage, [("run_reduce", (c,)) for c in cells])
            receipts += run(stage, [("run_merge", ())])
        parts = [p for r in receipts for p in r["parts"]]
        dropped = commit_keyed_parts(ws, "dropped", parts, DROPPED_SCHEMA, "pair_id") if parts else 0
    except BaseException:
        discard(ws, "dropped", [p for r in receipts for p in r["parts"]])
        raise
    finally:
        stage.cleanup(ws)
    return summary(stage, receipts, dropped, time.perf_counter() - started)


def summary(stage: SemanticDedupStage, receipts: list[Receipt], dropped: int,
            seconds: float) -> dict[str, Any]:
    """What the flow step reports: DedupStats' fields plus the tasks' figures."""
    by = {phase: [r for r in receipts if r["phase"] == phase] for phase in
          ("sample", "train", "map", "reduce", "merge")}
    considered = sum(int(r["considered"]) for r in by["map"])
    cells = int(by["train"][0]["cells"]) if by["train"] else 0
    fine = int(by["train"][0]["fine"]) if by["train"] else 0
    coarse = int(by["train"][0].get("coarse", 0)) if by["train"] else 0
    searches = sorted({str(r["search"]) for r in by["reduce"]}, key=lambda s: (len(s), s))
    return {
        "considered": considered, "groups": sum(int(r["groups"]) for r in by["merge"]), "dropped": dropped,
        "threshold": stage.dedup.threshold,
        "search": f"{fine} k-means cells" + (f" (two levels, {coarse} coarse)" if coarse else "")
                  + f" in {cells} groups, {stage.probed} probed; "
                  + (" | ".join(searches[:1] + searches[-1:] if len(searches) > 2 else searches) or "none"),
        "seconds": round(seconds, 3), "examined": sum(int(r["examined"]) for r in by["map"]),
        "without_vector": sum(int(r["without_vector"]) for r in by["map"]),
        "cells": cells, "fine_cells": fine, "coarse_cells": coarse,
        "edges": sum(int(r["edges"]) for r in by["reduce"]),
        "tasks": len(receipts), "tasks_by_phase": {k: len(v) for k, v in by.items()},
        "pids": sorted({int(r["pid"]) for r in receipts}),
        "task_seconds": round(sum(float(r["seconds"]) for r in receipts), 3),
        "task_peak_rss_mb": round(max((float(r["peak_rss_mb"]) for r in receipts), default=0.0), 1),
        "parts": [p["file"] for r in receipts for p in r["parts"]],
    }
