"""The pairs `synpref annotate push --limit N` sends, ranked one partition at a time, are the
pairs that ranking the whole pool's validated attributes sends."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from annotation.records import pair_priority
from flows.annotation_sync import select_for_push
from pipeline.pool import active_pool
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA, PreferenceAttributes
from schemas.labels import VERIFICATIONS_SCHEMA
from tests.embed_pool import mark_dropped, write_mixed_pool


@pytest.fixture(scope="module")
def workspace(shared_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("push-selection"))
    ids = write_mixed_pool(ws, shared_raw, ultrafeedback=(40, 150), hh=(25, 90))
    n = len(ids) - 5  # the last five have no attributes
    attributes = pl.DataFrame({
        "pair_id": ids[:n], "task_category": [["math", "code", "chat"][i % 3] for i in range(n)],
        "objectivity": [["objective", "subjective", "objective", "neither"][i % 4] for i in range(n)],
        "controversiality": [["low", "medium", "high", "low", "unknown"][i % 5] for i in range(n)],
        # an empty list or guideline would not validate: those pairs rank as if without attributes
        "desired_attributes": [[] if i % 7 == 0 else ["correct"] for i in range(n)],
        "guideline": ["" if i % 11 == 0 else "check it" for i in range(n)], "model": ["t"] * n})
    ws.append("attributes", attributes, schema=ATTRIBUTES_SCHEMA)
    mark_dropped(ws, ids[5:8])
    verified = ids[0:4]
    ws.append("verifications", pl.DataFrame({
        "pair_id": verified, "annotator": ["a"] * 4, "verdict": ["chosen"] * 4, "confidence": [3] * 4,
        "objective": [True] * 4, "rationale": [""] * 4, "status": ["submitted"] * 4, "reason": [None] * 4,
        "submitted_at": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 4, "record_id": verified,
        "round": [1] * 4}), schema=VERIFICATIONS_SCHEMA)
    return ws


def _ranked_from_whole_pool(ws: Workspace, limit: int | None, exclude: set[str],
                            include_verified: bool) -> list[str]:
    """How the pairs were chosen before: a validated attributes object per pair of the pool."""
    ids = active_pool(ws).select("pair_id").collect()["pair_id"].to_list()
    if not include_verified:
        done = set(ws.read("verifications", columns=["pair_id"]).column("pair_id").to_pylist())
        ids = [i for i in ids if i not in done]
    attrs: dict[str, PreferenceAttributes] = {}
    for row in ws.read("attributes", schema=ATTRIBUTES_SCHEMA).to_pylist():
        pair_id, _ = row.pop("pair_id"), row.pop("model")
        with contextlib.suppress(ValueError):
            attrs[pair_id] = PreferenceAttributes(**row)
    ranked = sorted((pair_priority(attrs.get(i)), i) for i in ids if i not in exclude)
    return [i for _, i in ranked][:limit]


@pytest.mark.parametrize("rows", [1_000, 9, 2])
@pytest.mark.parametrize(("limit", "include_verified"), [(None, False), (7, False), (20, True)])
def test_partitions_send_what_the_whole_pool_would(workspace: Workspace, rows: int, limit: int | None,
                                                   include_verified: bool) -> None:
    ws = workspace
    pool_ids = sorted(active_pool(ws).select("pair_id").collect()["pair_id"].to_list())
    assert len(pool_ids) == 62  # 65 pairs, 3 dropped
    exclude = set(pool_ids[10:13])
    expected = _ranked_from_whole_pool(ws, limit, exclude, include_verified)
    chosen = select_for_push(ws, limit=limit, exclude=exclude, include_verified=include_verified,
                             rows_per_partition=rows)
    assert chosen == expected
    assert len(set(chosen)) == len(chosen) and not set(chosen) & exclude
    if limit is None:  # every active pair not verified or excluded, the rankless ones last
        assert len(chosen) == len(pool_ids) - len(exclude) - (0 if include_verified else 4)
