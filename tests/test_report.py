"""The run report: round table, JSON, PNG plots and a self-contained HTML page."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.report import round_rows, round_table_markdown, write_report
from pipeline.store import Workspace

ROUNDS = [
    {"round": 2, "counts": {"gold": 10, "silver": 30, "unlabeled": 50, "dropped": 4},
     "gold_accuracy": 0.7, "gold_accuracy_per_category": {"math": 1.0, "chit-chat": 0.5},
     "retrieval": {"retrieved": 12}, "judges": {"judged": 12, "agreement": 0.75}},
    {"round": 1, "counts": {"gold": 10, "silver": 18, "unlabeled": 62, "dropped": 4},
     "gold_accuracy": 0.6, "gold_accuracy_per_category": {"math": 0.5},
     "retrieval": {"retrieved": 8}, "judges": {"judged": 18, "agreement": None}},
]
STAGE2 = {"counts": {"gold": 10, "silver": 30, "kept": 20, "flipped": 5, "unlabeled": 0, "dropped": 29},
          "judges": {"judged": 25, "agreement": 1.0}}


def test_rows_are_ordered_by_round_and_end_with_stage_2() -> None:
    rows = round_rows(ROUNDS, STAGE2)
    assert [r["round"] for r in rows] == ["1", "2", "stage 2"]
    assert rows[0]["kept"] == 0 and rows[2]["kept"] == 20 and rows[2]["flipped"] == 5
    table = round_table_markdown(rows).splitlines()
    assert table[0].startswith("| round | gold | silver | kept | flipped |")
    assert table[2] == "| 1 | 10 | 18 | 0 | 0 | 62 | 4 | 8 | 18 | - | 0 | n/a (n=0) | - | - | - |"
    assert table[4] == "| stage 2 | 10 | 30 | 20 | 5 | 0 | 29 | 0 | 25 | 1.000 | 0 | n/a (n=0) | - | - | - |"


def test_report_files_are_written_into_the_workspace(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    paths = write_report(ws, ROUNDS, STAGE2, export={"rows": 65, "counts": {"origin": {"human": 10}}})
    saved = json.loads(Path(paths.json).read_text())
    assert saved["export"]["rows"] == 65 and len(saved["table"]) == 3
    for png in (paths.gold_accuracy_png, paths.composition_png):
        assert Path(png).read_bytes().startswith(b"\x89PNG")
    page = Path(paths.html).read_text()
    assert page.count("data:image/png;base64,") == 2 and "<td>stage 2</td>" in page
    assert "| 2 | 10 | 30 |" in Path(paths.markdown).read_text()
