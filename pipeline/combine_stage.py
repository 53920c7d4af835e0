"""The combined text+image retrieval vectors of an image pool, built by partition tasks.

Retrieval over a pool with images (pipeline/embed_images.py) searches one vector per pair: its
text vector joined with the mean CLIP vector of its images. They used to be built in one process
for the whole active pool, and searched in one FAISS index of every vector. Here a task takes one
pool partition: its active pairs with their image hashes, their text vectors from the parts that
may hold them (pipeline/covers.py), the combined rows it already has, and CLIP (one model per
worker process) for the pairs whose text vector, images or image weight changed. It writes them
as a part tagged with the partition and returns a receipt; the driver commits each window of
receipts keyed by (pair_id, text_hash). Retrieval then searches the combined table by partition
tasks as it searches a text pool's (pipeline/retrieve_stage.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from pipeline.covers import tagged
from pipeline.embed import embeddings_table
from pipeline.embed_images import combined_rows, combined_table, conversation_images
from pipeline.embed_stage import commit_vectors, partition_keys
from pipeline.partitions import Partition, read_partition
from pipeline.parts import Receipt, write_part
from pipeline.retrieve_stage import partition_vectors
from pipeline.stage import _Timed
from pipeline.store import Workspace
from schemas.config.embed import EmbedConfig


@dataclass(frozen=True)
class CombineStage:
    """Combined vectors of one view for a partition's active pairs that lack them (or whose
    text vector, images or image weight changed)."""

    cfg: EmbedConfig
    view: str
    name: ClassVar[str] = "combine-views"
    gpus: ClassVar[float] = 1.0
    """GPUs a task asks for where the cluster has any (CLIP runs there)."""

    @property
    def table(self) -> str:
        return combined_table(self.cfg, self.view)

    def run(self, ws: Workspace, partition: Partition) -> Receipt:
        timer = _Timed()
        frames = list(read_partition(ws, partition, ["pair_id", "conversation"]))
        rows = pl.concat(frames).unique("pair_id", keep="first", maintain_order=True).sort("pair_id") \
            if frames else pl.DataFrame(schema={"pair_id": pl.String})
        shas = {pid: conversation_images(c) for pid, c in rows.iter_rows()} if rows.height else {}
        text_ids, text_vectors = partition_vectors(ws, embeddings_table(self.cfg.model, self.view),
                                                   rows["pair_id"], partition)
        done = partition_keys(ws, self.table, text_ids, partition)
        table = combined_rows(ws, self.cfg, self.view, text_ids, text_vectors, shas, done)
        parts = [] if table is None else [tagged(write_part(ws, self.table, table, table.schema), partition)]
        dim = int(table.schema.field("vector").type.list_size) if table is not None else 0
        return timer.receipt(self.name, partition.index, rows.height, parts,
                             combined=0 if table is None else table.num_rows,
                             unembedded=rows.height - len(text_ids), dim=dim)

    def commit(self, ws: Workspace, receipts: list[Receipt]) -> int:
        """Land a window of tasks' parts as one commit keyed by (pair_id, text_hash), in partition
        order; the rows that landed."""
        return commit_vectors(ws, self.table, receipts, f"{self.cfg.model}+{self.cfg.image_model}", self.view)
