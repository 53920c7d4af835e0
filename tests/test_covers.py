"""Side-table parts that say which pool rows they come from: a partition task reads only the parts
that can hold its pairs (pipeline/covers.py), counted on a filesystem that records every open."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import polars as pl
import pyarrow as pa

from pipeline.attributes_stage import AttributesStage, run_attributes
from pipeline.covers import COVERS, meeting, parts_meeting, tagged
from pipeline.embed import embeddings_table
from pipeline.embed_stage import EmbedStage, run_local
from pipeline.parts import commit_keyed_parts, write_part
from pipeline.score_stage import SCORE_KEY, SCORES, scored_among
from pipeline.semantic_dedup_cells import partition_vectors
from pipeline.stage import Partition, plan_partitions
from pipeline.store import Workspace
from pipeline.store_commit import AppendPlan, KeyCache, commit
from schemas.config import AttributesConfig
from schemas.labels import SCORES_SCHEMA
from schemas.pair import POOL_SCHEMA
from tests.dedup_vectors import FAST
from tests.embed_pool import ultrafeedback_records, write_pool
from tests.test_key_index import CountingMemoryFS, counting_workspace, opened_parts

SIDE = pa.schema([("pair_id", pa.string()), ("value", pa.int64())])


def pool_rows(ids: list[str], first: int) -> pa.Table:
    n = len(ids)
    return pa.table({
        "pair_id": ids, "conversation": [[{"role": "user", "content": i, "images": []}] for i in ids],
        "chosen": ["a"] * n, "rejected": ["b"] * n, "source": ["t"] * n, "source_id": ids,
        "label_source": ["ai"] * n, "license": [""] * n, "meta": ["{}"] * n,
        "ingest_seq": list(range(first, first + n)),
    }, schema=POOL_SCHEMA)


def side_parts(ws: Workspace, partitions: list[Partition]) -> list[str]:
    """One tagged part of `side` per partition (its first pair), and one part without covers."""
    parts = []
    for p in partitions:
        file, _, first, _ = p.ranges[0]
        pair = ws.read("pool", columns=["pair_id"]).column(0)  # small test pool
        shard = next(i for i, s in enumerate(ws.manifest("pool")["shards"]) if s["file"] == file)
        row = pair[sum(s["rows"] for s in ws.manifest("pool")["shards"][:shard]) + first].as_py()
        rows = pa.table({"pair_id": [row], "value": [p.index]})
        parts.append(tagged(write_part(ws, "side", rows, SIDE), p))
    parts.append(write_part(ws, "side", pa.table({"pair_id": ["untagged"], "value": [-1]}), SIDE))
    commit_keyed_parts(ws, "side", parts, SIDE, "pair_id")
    return [p["file"] for p in parts]


def opened(ws: Workspace, table: str, shards: list[dict]) -> set[str]:
    """The names of the parts among `shards` opened since the record was cleared."""
    return {p.rsplit("/", 1)[1] for p in opened_parts(ws, table, CountingMemoryFS.opened, shards)}


def test_a_partition_meets_the_parts_derived_from_its_rows_and_the_untagged_ones(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    for p in range(4):  # four pool parts of 10 rows
        ws.append("pool", pool_rows([f"{p}{i:063d}" for i in range(10)], 10 * p), schema=POOL_SCHEMA)
    written = plan_partitions(ws, 15)  # [part 0, half of part 1], [half of 1, part 2], [part 3]
    assert [len(p.ranges) for p in written] == [2, 2, 1]
    files = side_parts(ws, written)
    assert all(COVERS in s for s in ws.manifest("side")["shards"][:3])
    meeting = {p.index: [s["file"] for s in parts_meeting(ws, "side", p)] for p in written}
    assert meeting == {0: [files[0], files[3]], 1: [files[1], files[3]], 2: [files[2], files[3]]}
    # another partitioning of the same pool: a partition of part 1 alone meets both halves' parts
    again = {p.index: [s["file"] for s in parts_meeting(ws, "side", p)] for p in plan_partitions(ws, 10)}
    assert again == {0: [files[0], files[3]], 1: [files[0], files[1], files[3]],
                     2: [files[1], files[3]], 3: [files[2], files[3]]}
    assert [s["file"] for s in parts_meeting(ws, "side", None)] == files
    # the pool rewritten: its old part names are gone, so every tagged part may hold anything
    ws.replace("pool", ws.read("pool"), schema=POOL_SCHEMA, shard_rows=10)
    assert all(len(parts_meeting(ws, "side", p)) == 4 for p in plan_partitions(ws, 15))


def test_a_partition_task_opens_only_the_vectors_of_its_own_rows(shared_raw: Path) -> None:
    ws = counting_workspace()
    records = ultrafeedback_records(shared_raw, 12)
    write_pool(ws, records[:6])
    write_pool(ws, records[6:])
    stage = EmbedStage(FAST)
    run_local(ws, stage, rows_per_partition=4)  # 3 partitions, one vector part each
    table = embeddings_table(FAST.model, "conversation")
    shards = ws.manifest(table)["shards"]
    assert len(shards) == 3 and all(COVERS in s for s in shards)
    for partition in plan_partitions(ws, 4):
        CountingMemoryFS.opened = []
        receipt = stage.run(ws, partition)  # nothing left to embed: only the keys are read
        assert (receipt["embedded"], receipt["cached"]) == (0, partition.rows)
        assert opened(ws, table, shards) == {shards[partition.index]["file"]}
        ids = [r.pair_id for r in records[4 * partition.index : 4 * partition.index + 4]]
        CountingMemoryFS.opened = []
        found = partition_vectors(ws, table, pl.Series(ids), partition)
        assert sorted(pl.concat(found)["pair_id"].to_list()) == sorted(ids)
        assert opened(ws, table, shards) == {shards[partition.index]["file"]}


def test_attribute_tasks_read_only_the_attribute_parts_of_their_own_rows(shared_raw: Path) -> None:
    ws = counting_workspace()
    records = ultrafeedback_records(shared_raw, 12)
    write_pool(ws, records)
    stage = AttributesStage(AttributesConfig(kind="heuristic", batch_size=4))
    assert run_attributes(ws, stage, rows_per_partition=5).generated == 12  # 3 partitions
    shards = ws.manifest("attributes")["shards"]
    assert len(shards) == 3 and all(COVERS in s for s in shards)
    for partition in plan_partitions(ws, 5):
        CountingMemoryFS.opened = []
        receipt = stage.run(ws, partition)
        assert (receipt["parts"], receipt["skipped"]) == ([], partition.rows)
        assert opened(ws, "attributes", shards) == {shards[partition.index]["file"]}
    # a partition of other bounds reads every part its rows came from: here two of three
    CountingMemoryFS.opened = []
    wide = plan_partitions(ws, 8)[0]  # rows 0-7
    assert stage.run(ws, wide)["skipped"] == 8
    assert opened(ws, "attributes", shards) == {shards[0]["file"], shards[1]["file"]}


def test_scores_are_read_from_the_parts_of_the_partition_only(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    for p in range(3):
        ws.append("pool", pool_rows([f"{p}{i:063d}" for i in range(4)], 4 * p), schema=POOL_SCHEMA)
    partitions = plan_partitions(ws, 4)
    parts = []
    for partition in partitions:
        ids = [f"{partition.index}{i:063d}" for i in range(4)]
        p = 0.5 + partition.index / 10
        rows = pa.table({"pair_id": ids, "round": pa.array([0] * 4, pa.int32()), "model": ["rm"] * 4,
                         "r_chosen": [1.0] * 4, "r_rejected": [0.0] * 4, "p": [p] * 4}, schema=SCORES_SCHEMA)
        parts.append(tagged(write_part(ws, SCORES, rows), partition))
    commit_keyed_parts(ws, SCORES, parts, SCORES_SCHEMA, SCORE_KEY)
    asked = pl.Series([f"1{i:063d}" for i in range(4)])
    assert parts_meeting(ws, SCORES, partitions[1]) == [ws.manifest(SCORES)["shards"][1]]
    found = scored_among(ws, 0, "rm", asked, partitions[1])
    assert found["p"].to_list() == [0.6] * 4 and found.equals(scored_among(ws, 0, "rm", asked))


def test_a_keyed_append_of_a_partition_checks_only_that_partitions_parts() -> None:
    ws = counting_workspace()
    for p in range(3):
        ws.append("pool", pool_rows([f"{p}{i:063d}" for i in range(4)], 4 * p), schema=POOL_SCHEMA)
    partitions = plan_partitions(ws, 4)

    def rows(p: int, value: int = 0) -> pa.Table:
        return pa.table({"pair_id": [f"{p}{i:063d}" for i in range(4)], "value": [value] * 4}, schema=SIDE)

    ws.append("side", pa.table({"pair_id": [f"2{1:063d}"], "value": [9]}, schema=SIDE), unique_key="pair_id")
    for p in partitions:
        added = ws.append("side", rows(p.index), unique_key="pair_id", partition=p)
        assert added == (3 if p.index == 2 else 4)  # the untagged part holds one of partition 2's
    shards = ws.manifest("side")["shards"]
    assert COVERS not in shards[0] and all(COVERS in s for s in shards[1:])
    # a re-run adds nothing, and each append opens its own partition's part and the untagged one
    for p in partitions:
        CountingMemoryFS.opened = []
        assert ws.append("side", rows(p.index, 1), unique_key="pair_id", partition=p) == 0
        assert opened(ws, "side", shards) <= {shards[0]["file"], shards[p.index + 1]["file"]}
    # under the commit lock, parts committed since the append looked are checked the same way
    late = ws.manifest("side")["shards"]
    part = tagged(write_part(ws, "side", rows(1, 2), SIDE), partitions[1])
    plan = AppendPlan(ws, "side", rows(1, 2), part, late[:1], ["pair_id"],
                      lambda r: write_part(ws, "side", r), KeyCache(),
                      within=partial(meeting, ws, partition=partitions[1]))
    commit(ws, "side", plan)
    assert plan.written == 0 and ws.manifest("side")["shards"] == late
    assert ws.read("side").num_rows == 12
