"""Judging an id list in shards: the pairs and their attributes are gathered from the pool once, a
task per pool partition (pipeline/gather.py), and the shards read them from there, counted on a
filesystem that records every open."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from flows.judging import judge_in_shards
from pipeline.attributes_stage import AttributesStage, run_attributes
from pipeline.gather import GATHER, Gather
from pipeline.judges import build_judges, judge_pairs
from pipeline.judges.run import attributes_of, load_attributes, load_pairs
from pipeline.stage import plan_partitions
from pipeline.store import Workspace
from schemas.config import AttributesConfig, JudgeConfig
from schemas.errors import InputError
from schemas.pair import POOL_SCHEMA, PairRecord
from tests import flow_helpers
from tests.fixtures.judge_pairs import sample_pairs
from tests.test_key_index import CountingMemoryFS, counting_workspace

RULES = [JudgeConfig(name="rules", kind="rule", batch_size=2)]
prefect_api = flow_helpers.prefect_api


def pool_of(ws: Workspace, parts: int = 3) -> list[str]:
    """`parts` pool parts of the six sample pairs, each part's prompts marked with its number."""
    ids = []
    for p in range(parts):
        pairs = [PairRecord(conversation=(pair.conversation[0].model_copy(
            update={"content": f"{pair.conversation[0].content} (set {p})"}),), chosen=pair.chosen,
            rejected=pair.rejected, source="tests", meta=pair.meta) for pair in sample_pairs()]
        ws.append("pool", pa.Table.from_pylist([r.to_row() for r in pairs], schema=POOL_SCHEMA),
                  unique_key="pair_id", schema=POOL_SCHEMA)
        ids += [r.pair_id for r in pairs]
    return ids


def opened_parts(ws: Workspace, table: str) -> list[str]:
    names = {s["file"] for s in ws.manifest(table)["shards"]}
    return [p for p in CountingMemoryFS.opened if p.rsplit("/", 1)[-1] in names and f"/{table}/" in p]


def test_a_gather_gives_what_the_pool_lookups_give_and_its_readers_open_no_pool_part() -> None:
    ws = counting_workspace()
    ids = pool_of(ws)
    heuristic = AttributesStage(AttributesConfig(kind="heuristic", batch_size=4))
    run_attributes(ws, heuristic, rows_per_partition=6)
    wanted = [ids[1], ids[8], ids[15], ids[7]]  # three partitions, out of pool order
    gathered = Gather.start(ws, wanted)
    receipts = [gathered.run(ws, p) for p in plan_partitions(ws, 6)]
    assert [r["found"] for r in receipts] == [1, 2, 1] and [r["attributes"] for r in receipts] == [1, 2, 1]
    CountingMemoryFS.opened = []
    records = gathered.records(ws, wanted)
    attributes = attributes_of(gathered.attribute_rows(ws, wanted))
    assert not opened_parts(ws, "pool") and not opened_parts(ws, "attributes")
    assert records == load_pairs(ws, wanted) and attributes == load_attributes(ws, wanted)
    with pytest.raises(InputError, match="1 pair ids are not in the pool"):
        gathered.records(ws, [*wanted, "nope"])
    gathered.cleanup(ws)
    assert not ws.exists(gathered.folder)


def test_sharded_judging_gathers_once_and_judges_what_one_call_judges(prefect_api: str) -> None:
    ws = counting_workspace()
    ids = pool_of(ws)
    wanted = ids[::-1][:14]
    result = judge_in_shards(ws, RULES, None, wanted, 3, 0, shard_rows=4)  # type: ignore[arg-type]
    assert (result["shards"], result["gathered"], result["gather_tasks"]) == (4, 14, 1)
    assert not ws.listdir(GATHER)  # the scratch is gone
    sharded = pl.from_arrow(ws.read("judgments")).drop("created_at", strict=False)
    other = counting_workspace()
    pool_of(other)
    judge_pairs(other, build_judges(RULES), wanted, 3, 0)
    alone = pl.from_arrow(other.read("judgments")).drop("created_at", strict=False)
    assert sharded.height == alone.height > 0
    assert sharded.sort("pair_id").select("pair_id", "judge", "verdict").equals(
        alone.sort("pair_id").select("pair_id", "judge", "verdict"))
    again = judge_in_shards(ws, RULES, None, wanted, 3, 0, shard_rows=4)  # type: ignore[arg-type]
    assert again["judgments_written"] == 0


def test_read_ids_reads_the_row_groups_of_the_wanted_rows_within_the_range(tmp_path: object) -> None:
    import pyarrow.parquet as pq

    from pipeline.parts import read_ids

    ws = Workspace(str(tmp_path))
    ids = [f"{i:02d}" for i in range(10)]
    ws.fs.makedirs(ws.path("t"), exist_ok=True)
    part = pa.table({"pair_id": ids, "n": list(range(10))})
    pq.write_table(part, ws.path("t", "x.parquet"), row_group_size=3)  # groups of rows 0-2, 3-5, 6-8, 9
    wanted = pl.Series(["08", "01", "07", "nope", "04"])
    got = read_ids(ws, "t", "x.parquet", wanted, ["pair_id", "n"])
    assert got is not None and got.rows() == [("01", 1), ("04", 4), ("07", 7), ("08", 8)]  # part order
    within = read_ids(ws, "t", "x.parquet", wanted, ["n"], first=2, rows=6)  # rows 2-7
    assert within is not None and within["n"].to_list() == [4, 7]
    assert read_ids(ws, "t", "x.parquet", pl.Series(["nope"]), ["n"]) is None
