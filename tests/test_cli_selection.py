"""The pairs `synpref judge` and `synpref attributes` work on, chosen by --pairs, --source and --limit:
the active pool in pool order, read with the filters pushed into the scan."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli.common import UserError
from flows.cli.judge import select_pairs
from pipeline.ingest import ingest_source
from pipeline.sources import SourceSpec
from pipeline.store import Workspace
from tests.embed_pool import mark_dropped
from tests.test_key_index import write_pairs


@pytest.fixture
def pool(tmp_path: Path) -> tuple[Workspace, list[tuple[str, str]], set[str]]:
    """Three sources in four parts, every third pair of them dropped by cleaning."""
    ws = Workspace(tmp_path / "ws")
    for tag, rows in (("a", range(30)), ("b", range(25)), ("c", range(20)), ("a", range(30, 45))):
        ingest_source(ws, SourceSpec(str(write_pairs(tmp_path / f"{tag}{rows.start}.jsonl", rows, tag)),
                                     name=tag))
    rows = [(r["pair_id"], r["source"]) for r in ws.read("pool", columns=["pair_id", "source"]).to_pylist()]
    dropped = {pid for i, (pid, _) in enumerate(rows) if i % 3 == 0}
    mark_dropped(ws, sorted(dropped))
    return ws, rows, dropped


@pytest.mark.parametrize("sources", [None, ["b"], ["a", "c"], ["nope"]])
@pytest.mark.parametrize("limit", [None, 0, 7, 1000])
def test_the_active_pool_in_pool_order_filtered_then_cut(
    pool: tuple[Workspace, list[tuple[str, str]], set[str]], sources: list[str] | None, limit: int | None
) -> None:
    ws, rows, dropped = pool
    expected = [pid for pid, source in rows if pid not in dropped and (not sources or source in sources)]
    assert select_pairs(ws, None, limit, sources) == (expected if limit is None else expected[:limit])


def test_a_pairs_file_keeps_its_order_and_is_filtered_by_source(
    pool: tuple[Workspace, list[tuple[str, str]], set[str]], tmp_path: Path
) -> None:
    ws, rows, _ = pool
    chosen = [pid for pid, _ in rows[::-4]]  # reversed: not pool order, dropped pairs included
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(chosen))
    assert select_pairs(ws, path, None, None) == chosen
    source = dict(rows)
    assert select_pairs(ws, path, 3, ["b", "c"]) == [p for p in chosen if source[p] in ("b", "c")][:3]
    with pytest.raises(UserError, match="no pool"):
        select_pairs(Workspace(tmp_path / "empty"), None, None, None)
