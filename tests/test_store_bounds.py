"""A keyed append whose rows share one round checks only the parts that can hold that round: a
part's manifest entry records its rounds (`bounds`), so the process's key cache holds one round's
keys instead of every round's."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.store import Workspace

SCHEMA = pa.schema([("pair_id", pa.string()), ("round", pa.int32()), ("verdict", pa.string())])
KEY = ["pair_id", "round"]


def rows(ids: list[str], round_: int | list[int]) -> pa.Table:
    rounds = round_ if isinstance(round_, list) else [round_] * len(ids)
    return pa.table({"pair_id": ids, "round": rounds, "verdict": ["chosen"] * len(ids)}, schema=SCHEMA)


def cached(ws: Workspace) -> set[str]:
    return set(ws._keys._parts.get(("judgments", tuple(KEY)), {}))


def test_an_append_of_one_round_reads_only_that_rounds_parts(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    assert ws.append("judgments", rows(["a", "b"], 1), unique_key=KEY, schema=SCHEMA) == 2
    assert ws.append("judgments", rows(["a", "c"], 2), unique_key=KEY, schema=SCHEMA) == 2
    parts = {s["file"]: s for s in ws.manifest("judgments")["shards"]}
    assert [s["bounds"] for s in parts.values()] == [{"round": [1, 1]}, {"round": [2, 2]}]
    round_2 = next(f for f, s in parts.items() if s["bounds"]["round"] == [2, 2])

    fresh = Workspace(tmp_path / "ws")  # a new process: an empty key cache
    # a and c are in round 2 already; b is new to round 2 (its round-1 row is another key)
    assert fresh.append("judgments", rows(["a", "b", "c"], 2), unique_key=KEY, schema=SCHEMA) == 1
    assert cached(fresh) == {round_2}
    # rows of several rounds are checked against every part
    assert fresh.append("judgments", rows(["a", "d"], [1, 3]), unique_key=KEY, schema=SCHEMA) == 1
    assert cached(fresh) == {s["file"] for s in fresh.manifest("judgments")["shards"][:-1]}  # all before it
    stored = sorted(zip(*fresh.read("judgments").select(KEY).to_pydict().values(), strict=True))
    assert stored == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 2), ("d", 3)]


def test_a_part_without_bounds_is_always_checked(tmp_path: Path) -> None:
    """Parts written before bounds were recorded (or of a table whose rounds hold nulls) may
    hold any round: every append checks them."""
    ws = Workspace(tmp_path / "ws")
    ws.append("judgments", rows(["a", "b"], 1), unique_key=KEY, schema=SCHEMA)
    manifest = ws.read_json("judgments/_manifest.json")
    for shard in manifest["shards"]:
        del shard["bounds"]
    ws.write_json("judgments/_manifest.json", manifest)
    fresh = Workspace(tmp_path / "ws")
    assert fresh.append("judgments", rows(["a", "c"], 1), unique_key=KEY, schema=SCHEMA) == 1
    assert fresh.append("judgments", rows(["a"], 2), unique_key=KEY, schema=SCHEMA) == 1
    no_rounds = pa.table({"pair_id": ["x"], "round": pa.array([None], pa.int32()), "verdict": ["t"]})
    fresh.append("judgments", no_rounds, unique_key=KEY, schema=SCHEMA)
    assert "bounds" not in fresh.manifest("judgments")["shards"][-1]
