"""The round summary's pool counts and lookups, counted by scans instead of id sets in the driver."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from flows.loop_state import active_ids, pool_counts, with_attributes
from pipeline.store import Workspace
from schemas.labels import LABELS_SCHEMA
from schemas.pair import DROPPED_SCHEMA
from tests.embed_pool import ultrafeedback_records, write_pool


def _labels(ws: Workspace, table: str, ids: list[str]) -> None:
    n = len(ids)
    ws.append(table, pl.DataFrame({"pair_id": ids, "verdict": ["chosen"] * n, "origin": ["test"] * n,
                                   "round": [1] * n, "detail": [""] * n}), schema=LABELS_SCHEMA)


def test_pool_counts_match_the_id_sets(shared_raw: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    pairs = ultrafeedback_records(shared_raw, 12, skip=140)
    write_pool(ws, pairs)
    ids = [p.pair_id for p in pairs]
    assert pool_counts(ws) == {"gold": 0, "silver": 0, "unlabeled": 12, "dropped": 0}
    # dropped: two pool pairs (one of them gold) twice over, and an ingest-stage row naming a source row
    gone = [ids[0], ids[1], ids[1], "ingest-tie-of-a-source-row"]
    ws.append("dropped", pl.DataFrame({
        "pair_id": gone, "stage": ["exact-dedup", "contamination", "semantic-dedup", "ingest"],
        "reason": ["t"] * 4, "kept_pair_id": [None] * 4, "similarity": [None] * 4, "detail": ["{}"] * 4,
    }), schema=DROPPED_SCHEMA)
    _labels(ws, "gold", [ids[0], ids[2], ids[3]])
    _labels(ws, "silver", [ids[3], ids[4], ids[5]])

    gold, silver = {ids[0], ids[2], ids[3]}, {ids[4], ids[5]}
    active = set(ids) - {ids[0], ids[1]}
    assert pool_counts(ws) == {"gold": len(gold), "silver": len(silver),
                               "unlabeled": len(active - gold - silver), "dropped": len(set(gone))}

    asked = pl.Series("pair_id", [ids[1], ids[2], ids[7], "not-in-the-pool"])
    assert active_ids(ws, asked)["pair_id"].to_list() == sorted([ids[2], ids[7]])
    assert active_ids(ws, asked).columns == active_ids(ws).columns
    frame = with_attributes(ws, pl.DataFrame({"pair_id": [ids[2], "not-in-the-pool"]}))
    assert frame.columns == ["pair_id", "task_category", "objectivity", "controversiality"]
    assert frame.height == 2
