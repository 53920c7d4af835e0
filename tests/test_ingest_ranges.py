"""Big files are staged in ranges: byte ranges of uncompressed JSONL, runs of Parquet row groups.

Each range is read with the numbers its rows have in the whole file, so pairs (their source_id),
quarantined rows (file, row, field) and dropped rows are exactly what one read of the file gives,
whichever path parses the rows (the column-wise JSONL reader or the row-by-row one). A folder of
JSONL files reads column-wise too, each row's `meta.subset` naming its file's folder."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources.loader import SourceSpec, iter_pair_batches, load_pairs, source_files
from pipeline.sources.ranges import Unit, count_lines, counted_units, numbered, plan_units, ranges_to_count
from pipeline.sources.records import LoadedPairs

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
MALFORMED_LINE = 51


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real pairs with bad rows planted: a malformed line, blank lines, identical responses, a row
    that is not an object."""
    root = tmp_path_factory.mktemp("ranges")
    lines = (DATA / "ultrafeedback" / "eval_clean.jsonl").read_bytes().split(b"\n")
    lines.insert(MALFORMED_LINE - 1, b"{not json")
    lines[100:100] = [b"", b"   "]
    lines.insert(150, json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}).encode())
    (root / "uf.jsonl").write_bytes(b"\n".join(lines))
    hh = gzip.decompress((DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz").read_bytes()).split(b"\n")
    hh.insert(50, b"[1, 2]")
    (root / "hh.jsonl").write_bytes(b"\n".join(hh[:1500]))
    source = (DATA / "ultrafeedback" / "eval_clean.jsonl").read_bytes().split(b"\n")
    records = [json.loads(line) for line in source if line.strip()]
    pq.write_table(pa.Table.from_pylist(records), root / "uf.parquet", row_group_size=40)
    return {"fast": root / "uf.jsonl", "rows": root / "hh.jsonl", "parquet": root / "uf.parquet"}


def _rows(loaded: LoadedPairs) -> tuple[list[Any], list[Any], list[Any]]:
    return loaded.pairs.to_pylist(), loaded.quarantine.to_pylist(), loaded.dropped.to_pylist()


@pytest.mark.parametrize(("kind", "fmt", "split"), [
    ("fast", "prompt-chosen-rejected", 40_000),
    ("rows", "hh-rlhf", 60_000),
    ("parquet", "prompt-chosen-rejected", 30_000),
])
def test_a_file_read_in_ranges_gives_the_rows_of_one_read(files: dict[str, Path], kind: str, fmt: str,
                                                          split: int) -> None:
    path = str(files[kind])
    whole = load_pairs(path, format=fmt)
    spec = SourceSpec(path, fmt, split_bytes=split)
    units = list(counted_units(source_files(spec), split))
    assert len(units) >= 3 and all(u.kind != "file" for u in units)
    # Each unit read on its own (as a staging task reads it), then put together in order.
    apart = [batch for unit in units for batch in iter_pair_batches(spec, unit=unit)]
    assert _rows(LoadedPairs.concat(apart, fmt)) == _rows(whole)
    assert whole.quarantine.num_rows > 0
    if kind == "fast":  # the malformed line keeps its number in the file, wherever its range starts
        rows = {r["row"] for r in whole.quarantine.to_pylist() if "malformed" in r["reason"]}
        assert rows == {MALFORMED_LINE}


def test_byte_ranges_end_on_lines_and_their_counted_lines_number_the_next(files: dict[str, Path]) -> None:
    path = files["fast"]
    data = path.read_bytes()
    units = plan_units([(str(path), path.name)], 40_000)
    assert units[0].start == 0 and units[-1].end == len(data)
    assert all(a.end == b.start for a, b in itertools.pairwise(units))
    assert all(data[u.end - 1:u.end] == b"\n" for u in units[:-1])  # a range ends right after a newline
    assert [u.first_row for u in units] == [1] + [None] * (len(units) - 1)
    counts = {i: count_lines(str(path), units[i]) for i in ranges_to_count(units)}
    assert sorted(counts) == list(range(len(units) - 1))  # the last range's lines number nothing
    first_rows = [u.first_row for u in numbered(units, counts)]
    assert first_rows == [1 + data[:u.start].count(b"\n") for u in units]


def test_small_gzipped_and_limited_sources_stay_whole(files: dict[str, Path], tmp_path: Path) -> None:
    path = files["fast"]
    assert plan_units([(str(path), path.name)], 1 << 30) == [Unit(0)]
    packed = tmp_path / "uf.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert plan_units([(str(packed), packed.name)], 1_000) == [Unit(0)]  # gzip cannot be entered mid-stream
    from pipeline.ingest import plan_units as source_units

    assert source_units(SourceSpec(str(path), split_bytes=1_000, limit=10)) == [Unit(None)]
    with pytest.raises(ValueError, match="split_bytes"):
        plan_units([(str(path), path.name)], 0)


def test_a_folder_of_jsonl_files_reads_column_wise_with_each_files_subset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (DATA / "ultrafeedback" / "eval_clean.jsonl").read_bytes().split(b"\n")
    texts = [json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}).encode()
             for row in map(json.loads, filter(None, source))]
    texts[30:30] = [b"{not json", json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}).encode()]
    for sub, part in (("a", texts[:120]), ("b", texts[120:])):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{sub}.jsonl").write_bytes(b"\n".join(part) + b"\n")
    alone = [load_pairs(str(tmp_path / sub / f"{sub}.jsonl"), format="prompt-chosen-rejected")
             for sub in "ab"]

    def row_by_row(*args: Any) -> Any:
        raise AssertionError("a folder of prompt/chosen/rejected JSONL files is read row by row")

    monkeypatch.setattr("pipeline.sources.loader._row_batches", row_by_row)
    folder = load_pairs(str(tmp_path), format="prompt-chosen-rejected")
    pairs = folder.pairs.to_pylist()
    expected = [{**row, "source_id": f"{sub}/{row['source_id']}", "meta": json.dumps({"subset": sub})}
                for sub, one in zip("ab", alone, strict=True) for row in one.pairs.to_pylist()]
    assert [{**p, "source": ""} for p in pairs] == [{**p, "source": ""} for p in expected]
    assert len(pairs) > 150 and {p["source"] for p in pairs} == {tmp_path.name}
    # the malformed line and the identical responses are quarantined with their line in their file
    quarantined = [(Path(q["source_file"]).parent.name, q["row"]) for q in folder.quarantine.to_pylist()]
    assert quarantined == [(sub, q["row"]) for sub, one in zip("ab", alone, strict=True)
                           for q in one.quarantine.to_pylist()]
    assert quarantined[:2] == [("a", 31), ("a", 32)]
