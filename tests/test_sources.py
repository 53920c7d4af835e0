"""Source readers: real files with exact counts, every quarantine case, detection and clear errors."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sources import FORMAT_NAMES, SourceReadError, iter_benchmark_prompts, load_pairs
from schemas.pair import DROPPED_SCHEMA, POOL_SCHEMA, QUARANTINE_SCHEMA, PairRecord, compute_pair_id

HH_SPLITS = {
    # split: (lines, pairs, quarantined as {(field, reason): rows})
    "harmless-base": (2312, 2308, {("chosen", "empty response"): 4}),
    "helpful-base": (2354, 2348, {("rejected", "empty response"): 4,
                                  ("rejected", "chosen and rejected are identical"): 2}),
    "helpful-online": (1137, 1132, {("rejected", "empty response"): 3,
                                    ("rejected", "chosen and rejected are identical"): 2}),
    "helpful-rejection-sampled": (2749, 2717, {("rejected", "chosen and rejected are identical"): 32}),
}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return path


def reasons(loaded) -> Counter:
    q = loaded.quarantine
    return Counter(zip(q.column("field").to_pylist(), q.column("reason").to_pylist(), strict=True))


@pytest.mark.parametrize("split", list(HH_SPLITS))
def test_hh_rlhf_test_splits_exact_counts(shared_raw: Path, split: str) -> None:
    lines, pairs, quarantined = HH_SPLITS[split]
    loaded = load_pairs(str(shared_raw / "hh-rlhf" / split / "test.jsonl.gz"))
    assert loaded.format == "hh-rlhf"
    assert loaded.rows_read == lines
    assert loaded.pairs.num_rows == pairs
    assert dict(reasons(loaded)) == quarantined
    assert loaded.pairs.num_rows + loaded.quarantine.num_rows == lines
    assert loaded.pairs.schema == POOL_SCHEMA and loaded.quarantine.schema == QUARANTINE_SCHEMA
    assert set(loaded.pairs.column("label_source").to_pylist()) == {"human"}
    assert len(set(loaded.pairs.column("pair_id").to_pylist())) == pairs


def test_hh_rlhf_splits_the_shared_prefix_into_turns(shared_raw: Path) -> None:
    loaded = load_pairs(str(shared_raw / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"), limit=1)
    row = loaded.pairs.to_pylist()[0]
    with gzip.open(shared_raw / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt") as fh:
        raw = json.loads(fh.readline())
    roles = [m["role"] for m in row["conversation"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert row["conversation"][0]["content"] == "what are some pranks with a pen i can do?"
    assert raw["chosen"].endswith(row["chosen"]) and raw["rejected"].endswith(row["rejected"])
    assert row["source_id"] == "test.jsonl.gz:1"
    record = PairRecord.from_row(row)  # the stored id matches the content
    assert record.pair_id == row["pair_id"]


def test_hh_rlhf_response_that_writes_human_turns_stays_whole(tmp_path: Path) -> None:
    prefix = ("\n\nHuman: Are drag queens men?\n\nAssistant: No."
              "\n\nHuman: Isn't that drag kings?\n\nAssistant:")
    chosen = prefix + " No. Men are drag kings.  Human: Then why?\n\nAssistant: Because."
    rejected = prefix + " Yes, you are right."
    loaded = load_pairs(str(write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}])))
    row = loaded.pairs.to_pylist()[0]
    assert len(row["conversation"]) == 3
    assert row["chosen"] == "No. Men are drag kings.  Human: Then why?\n\nAssistant: Because."
    assert row["rejected"] == "Yes, you are right."


def test_pandalm_majority_ties_and_undecidable(tmp_path: Path) -> None:
    base = {"idx": 0, "motivation_app": "x", "cmp_key": "a_b", "instruction": "Summarize.",
            "input": "Text here"}
    rows = [
        {**base, "response1": "one", "response2": "two", "annotator1": 2, "annotator2": 2, "annotator3": 1},
        {**base, "response1": "one", "response2": "three", "annotator1": 1, "annotator2": 0, "annotator3": 1},
        {**base, "response1": "one", "response2": "four", "annotator1": 0, "annotator2": 0, "annotator3": 1},
        {**base, "response1": "one", "response2": "five", "annotator1": 0, "annotator2": 1, "annotator3": 2},
        {**base, "response1": "one", "response2": "six", "annotator1": 3, "annotator2": 1, "annotator3": 1},
    ]
    path = tmp_path / "pandalm.json"
    path.write_text(json.dumps(rows))
    loaded = load_pairs(str(path))
    assert loaded.format == "pandalm"
    pairs = loaded.pairs.to_pylist()
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("two", "one"), ("one", "three")]
    assert pairs[0]["conversation"][0]["content"] == "Summarize.\n\nText here"
    assert json.loads(pairs[0]["meta"])["votes"] == [2, 2, 1]
    dropped = loaded.dropped.to_pylist()
    assert [d["reason"] for d in dropped] == ["tie", "undecidable-majority"]
    assert json.loads(dropped[1]["detail"])["votes"] == [0, 1, 2]
    assert json.loads(dropped[0]["detail"])["row"] == 3
    assert loaded.dropped.schema == DROPPED_SCHEMA
    assert dict(reasons(loaded)) == {("annotator1", "expected 0 (tie), 1 or 2, got 3"): 1}


def test_pandalm_real_file_exact_counts(shared_raw: Path) -> None:
    loaded = load_pairs(str(shared_raw / "pandalm" / "testset-v1.json"))
    assert loaded.rows_read == 999
    assert loaded.pairs.num_rows == 836
    assert len(set(loaded.pairs.column("pair_id").to_pylist())) == 760
    assert Counter(loaded.dropped.column("reason").to_pylist()) == {"tie": 103}
    assert dict(reasons(loaded)) == {
        ("rejected", "empty response"): 53,
        ("chosen", "empty response"): 1,
        ("response1", "expected a string, got bool"): 4,
        ("response2", "expected a string, got bool"): 2,
    }


def test_llmbar_folder_labels_and_subsets(shared_raw: Path) -> None:
    loaded = load_pairs(str(shared_raw / "llmbar" / "Dataset"))
    assert loaded.format == "llmbar"
    assert loaded.rows_read == 885 and loaded.pairs.num_rows == 883
    assert dict(reasons(loaded)) == {("rejected", "chosen and rejected are identical"): 1,
                                     ("rejected", "empty response"): 1}
    subsets = Counter(json.loads(m)["subset"] for m in loaded.pairs.column("meta").to_pylist())
    assert subsets["LLMBar/Natural"] == 100 and subsets["Processed/LLMEval^2"] == 198
    first = json.loads((shared_raw / "llmbar/Dataset/LLMBar/Adversarial/GPTInst/dataset.json").read_text())[0]
    row = loaded.pairs.to_pylist()[0]
    better = first["output_1"] if first["label"] == 1 else first["output_2"]
    assert row["chosen"] == better and row["conversation"][0]["content"] == first["input"]


@pytest.mark.parametrize(
    ("relpath", "fmt", "rows", "pairs", "unique", "label"),
    [
        ("llamafactory/dpo_en_demo.json", "sharegpt", 300, 300, 295, "unknown"),
        ("offsetbias/biasbench.json", "offsetbias", 80, 80, 80, "human"),
        ("ultrafeedback/eval_clean.jsonl", "prompt-chosen-rejected", 200, 199, 199, "unknown"),
        ("ultrafeedback/train_clean.jsonl", "prompt-chosen-rejected", 1000, 994, 994, "unknown"),
    ],
)
def test_other_real_files_exact_counts(shared_raw: Path, relpath: str, fmt: str, rows: int, pairs: int,
                                       unique: int, label: str) -> None:
    loaded = load_pairs(str(shared_raw / relpath))
    assert (loaded.format, loaded.rows_read, loaded.pairs.num_rows) == (fmt, rows, pairs)
    assert len(set(loaded.pairs.column("pair_id").to_pylist())) == unique
    assert set(loaded.pairs.column("label_source").to_pylist()) == {label}
    assert loaded.quarantine.num_rows == rows - pairs


def test_sharegpt_system_prompt_becomes_first_turn(shared_raw: Path) -> None:
    loaded = load_pairs(str(shared_raw / "llamafactory" / "dpo_en_demo.json"))
    with_system = [r for r in loaded.pairs.to_pylist() if r["conversation"][0]["role"] == "system"]
    assert len(with_system) == 80
    assert all(r["conversation"][-1]["role"] == "user" for r in loaded.pairs.to_pylist())


def test_offsetbias_subset_and_flip(tmp_path: Path) -> None:
    doc = {"length bias": [{"bias": "length bias", "instruction": "Say hi.", "response1": "hi",
                            "response2": "hello there", "label": 2}]}
    path = tmp_path / "bias.json"
    path.write_text(json.dumps(doc))
    row = load_pairs(str(path)).pairs.to_pylist()[0]
    assert (row["chosen"], row["rejected"]) == ("hello there", "hi")
    assert json.loads(row["meta"])["subset"] == "length bias"


def test_every_quarantine_case_names_row_field_and_reason(tmp_path: Path) -> None:
    good = {"prompt": "Q", "chosen": "A", "rejected": "B"}
    path = tmp_path / "pcr.jsonl"
    with open(path, "wb") as fh:
        for line in [
            json.dumps(good),
            '{"prompt": "Q", "chosen": ',  # malformed JSON
            json.dumps({"prompt": "Q", "rejected": "B"}),  # missing field
            json.dumps({"prompt": "Q", "chosen": 7, "rejected": "B"}),  # wrong type
            json.dumps({"prompt": "Q", "chosen": "  ", "rejected": "B"}),  # empty
            json.dumps({"prompt": "Q", "chosen": "Same  answer", "rejected": "Same answer "}),  # identical
            '{"prompt": "Q", "chosen": "A\\ud800", "rejected": "B"}',  # lone surrogate escape
            "[1, 2]",  # not an object
            "",  # blank lines are not rows
        ]:
            fh.write(line.encode() + b"\n")
        fh.write(b'{"prompt": "Q\xff\xfe", "chosen": "A", "rejected": "B"}\n')  # invalid UTF-8 bytes
    loaded = load_pairs(str(path))
    assert loaded.pairs.num_rows == 1
    got = {(r["row"], r["field"], r["reason"].split(":")[0]) for r in loaded.quarantine.to_pylist()}
    assert got == {
        (2, "", "malformed JSON"),
        (3, "chosen", "missing field"),
        (4, "chosen", "expected a string or messages, got int"),
        (5, "chosen", "empty response"),
        (6, "rejected", "chosen and rejected are identical"),
        (7, "chosen", "bad encoding"),
        (8, "", "expected a JSON object, got list"),
        (10, "conversation[0].content", "bad encoding"),
    }
    raw = {r["row"]: r["raw"] for r in loaded.quarantine.to_pylist()}
    assert raw[2] == '{"prompt": "Q", "chosen": ' and "\ufffd" in raw[10]
    assert set(loaded.quarantine.column("source_file").to_pylist()) == {str(path)}


def test_message_and_role_errors_are_quarantined(tmp_path: Path) -> None:
    rows = [
        {"conversations": [{"from": "alien", "value": "hi"}], "chosen": {"from": "gpt", "value": "a"},
         "rejected": {"from": "gpt", "value": "b"}},
        {"conversations": "hello", "chosen": "a", "rejected": "b"},
        {"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "human", "value": "a"},
         "rejected": {"from": "gpt", "value": "b"}},
        {"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt", "value": "a"},
         "rejected": {"from": "gpt", "value": "b"}, "system": 5},
    ]
    loaded = load_pairs(str(write_jsonl(tmp_path / "sg.jsonl", rows)), format="sharegpt")
    assert loaded.pairs.num_rows == 0
    assert [(r["field"], r["reason"]) for r in loaded.quarantine.to_pylist()] == [
        ("conversations[0].role", "unknown role 'alien'"),
        ("conversations", "expected a list of messages, got str"),
        ("chosen", "the final message is from user, not the assistant"),
        ("system", "expected a string, got int"),
    ]


def test_gzip_is_read_transparently_and_ids_do_not_depend_on_the_container(tmp_path: Path) -> None:
    rows = [{"prompt": f"question {i}", "chosen": "yes", "rejected": "no"} for i in range(5)]
    plain = write_jsonl(tmp_path / "a.jsonl", rows)
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    as_json = tmp_path / "c.json"
    as_json.write_text(json.dumps(rows))
    ids = [load_pairs(str(p)).pairs.column("pair_id").to_pylist() for p in (plain, packed, as_json)]
    assert ids[0] == ids[1] == ids[2]
    assert ids[0][0] == compute_pair_id([{"role": "user", "content": "question 0"}], "yes", "no")


def test_column_wise_path_matches_row_by_row_ids(tmp_path: Path) -> None:
    """The JSONL fast path and the row path give identical pair_ids, including tricky text."""
    texts = ["plain", "tab\there", "new\nline  x ", "quote \" back\\slash", "ctrl \x01\x1b\x1c end",
             "e\u0301 composed", "nbsp\u00a0and\u3000ideographic", "emoji 😀", "ends space ", "\u2028sep"]
    rows = [{"prompt": p, "chosen": f"{c} good", "rejected": f"{c} bad", "n": i}
            for i, (p, c) in enumerate(zip(texts, reversed(texts), strict=True))]
    fast = load_pairs(str(write_jsonl(tmp_path / "fast.jsonl", rows)))
    # a JSON array goes row by row
    (tmp_path / "slow.json").write_text(json.dumps(rows))
    slow = load_pairs(str(tmp_path / "slow.json"))
    assert fast.pairs.column("pair_id").to_pylist() == slow.pairs.column("pair_id").to_pylist()
    expected = [compute_pair_id([{"role": "user", "content": r["prompt"]}], r["chosen"], r["rejected"])
                for r in rows]
    assert fast.pairs.column("pair_id").to_pylist() == expected
    assert [json.loads(m) for m in fast.pairs.column("meta").to_pylist()] == [{"n": i} for i in range(10)]


def test_column_wise_path_keeps_good_rows_around_bad_ones(tmp_path: Path) -> None:
    rows: list[object] = []
    for i in range(3000):
        if i % 500 == 17:
            rows.append('{"prompt": "broken')
        elif i % 700 == 3:
            rows.append({"prompt": "p", "chosen": "dup", "rejected": "dup"})
        else:
            rows.append({"prompt": f"prompt {i}", "chosen": "a", "rejected": "b"})
    loaded = load_pairs(str(write_jsonl(tmp_path / "mixed.jsonl", rows)))
    assert loaded.rows_read == 3000
    assert loaded.quarantine.num_rows == 6 + 5
    assert loaded.pairs.num_rows == 3000 - 11
    bad_rows = sorted(loaded.quarantine.column("row").to_pylist())
    assert bad_rows == sorted([i + 1 for i in range(3000) if i % 500 == 17 or i % 700 == 3])
    good_lines = [int(s.split(":")[1]) for s in loaded.pairs.column("source_id").to_pylist()]
    assert sorted(good_lines) == [i + 1 for i in range(3000) if i % 500 != 17 and i % 700 != 3]


def test_prompt_formats_trl_conversational_and_implicit(tmp_path: Path) -> None:
    rows = [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go"}]},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go"}]},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Go"}]},
    ]
    loaded = load_pairs(str(write_jsonl(tmp_path / "trl.jsonl", rows)))
    pairs = loaded.pairs.to_pylist()
    assert [m["role"] for m in pairs[0]["conversation"]] == ["system", "user"]
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("Hello", "Go")
    assert [(r["field"], r["reason"]) for r in loaded.quarantine.to_pylist()] == [
        ("rejected", "chosen and rejected conversations differ before the final turn")]


def test_generic_column_map_over_csv_parquet_and_jsonl(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "good": "yes", "bad": "no", "extra": i} for i in range(4)]
    rows.append({"question": "q9", "good": "", "bad": "no", "extra": 9})
    csv = tmp_path / "pairs.csv"
    lines = [f"{r['question']},{r['good']},{r['bad']},{r['extra']}\n" for r in rows]
    csv.write_text("question,good,bad,extra\n" + "".join(lines))
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    jsonl = write_jsonl(tmp_path / "pairs.jsonl", rows)
    mapping = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    results = [load_pairs(str(p), column_map=mapping, name="mine") for p in (csv, parquet, jsonl)]
    for loaded in results:
        assert loaded.format == "generic"
        assert loaded.pairs.num_rows == 4
        assert [(r["row"], r["field"], r["reason"]) for r in loaded.quarantine.to_pylist()] == [
            (5, "good", "empty response")]
        assert set(loaded.pairs.column("source").to_pylist()) == {"mine"}
    assert results[0].pairs.column("pair_id") == results[1].pairs.column("pair_id")
    assert json.loads(results[1].pairs.column("meta")[0].as_py()) == {"extra": 0}
    with pytest.raises(ValueError, match="unknown field"):
        load_pairs(str(csv), column_map={"question": "prompt"})


def test_detection_errors_are_clear(tmp_path: Path) -> None:
    unknown = write_jsonl(tmp_path / "odd.jsonl", [{"text": "a", "score": 1}])
    with pytest.raises(SourceReadError, match=r"odd\.jsonl: cannot tell the format .*\[score, text\]"):
        load_pairs(str(unknown))
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"input": "q", "output_1": "a", "output_2": "b", "label": 1},
    ])
    with pytest.raises(SourceReadError, match="different formats"):
        load_pairs(str(mixed))
    assert load_pairs(str(mixed), format="llmbar").pairs.num_rows == 1
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        load_pairs(str(mixed), format="nope")
    assert "generic" in FORMAT_NAMES


def test_unreadable_files_raise_with_path_and_cause(tmp_path: Path) -> None:
    with pytest.raises(SourceReadError, match=r"file not found: .*missing\.jsonl"):
        load_pairs(str(tmp_path / "missing.jsonl"))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"prompt": "q", ')
    with pytest.raises(SourceReadError, match=r"bad.json: not valid JSON: .* line 1"):
        load_pairs(str(bad_json))
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n' * 1000)[:200])
    with pytest.raises(SourceReadError, match=r"cut\.jsonl\.gz: cannot read"):
        load_pairs(str(truncated))
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_bytes(b"nope")
    with pytest.raises(SourceReadError, match=r"x\.parquet: not a readable Parquet file"):
        load_pairs(str(not_parquet), column_map={"prompt": "q"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceReadError, match="folder holds no supported files"):
        load_pairs(str(tmp_path / "empty"))


def test_limit_and_source_name(shared_raw: Path) -> None:
    loaded = load_pairs(str(shared_raw / "ultrafeedback" / "train_clean.jsonl"), limit=10, license="MIT")
    assert loaded.rows_read == 10
    assert set(loaded.pairs.column("source").to_pylist()) == {"ultrafeedback/train_clean"}
    assert set(loaded.pairs.column("license").to_pylist()) == {"MIT"}
    assert set(loaded.pairs.column("ingest_seq").to_pylist()) == {-1}


def test_benchmark_prompts_include_items_that_are_not_valid_pairs(shared_raw: Path, tmp_path: Path) -> None:
    prompts = list(iter_benchmark_prompts(str(shared_raw / "llmbar" / "Dataset" / "Processed")))
    assert len(prompts) == 66 + 200 + 200  # ties and identical outputs still have a prompt
    rows = [{"input": "same outputs here", "output_1": "x", "output_2": "x", "label": 1}]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(rows))
    assert list(iter_benchmark_prompts(str(path))) == [("b.json:1", "same outputs here")]


def test_llamafactory_alpaca_rows_with_history(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate", "input": "bonjour", "chosen": "hello", "rejected": "bye",
         "system": "Be exact.", "history": [["hi", "hello!"]]},
        {"instruction": "Add", "chosen": "4", "rejected": "5", "history": [["only one"]]},
    ]
    loaded = load_pairs(str(write_jsonl(tmp_path / "alpaca.jsonl", rows)))
    assert loaded.format == "prompt-chosen-rejected"
    row = loaded.pairs.to_pylist()[0]
    assert [(m["role"], m["content"]) for m in row["conversation"]] == [
        ("system", "Be exact."), ("user", "hi"), ("assistant", "hello!"), ("user", "Translate\n\nbonjour")]
    assert json.loads(row["meta"]) == {}
    assert [(r["field"], r["reason"]) for r in loaded.quarantine.to_pylist()] == [
        ("history[0]", "expected a [user, assistant] pair of strings")]


def test_hub_ids_go_through_datasets_with_a_clear_error_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for hub_id in ("nobody-synpref/no-such-dataset", "hf://datasets/nobody-synpref/no-such-dataset"):
        with pytest.raises(SourceReadError, match=r"no-such-dataset: cannot load the hub dataset"):
            load_pairs(hub_id, split="test")


def test_missing_file_names_are_files_not_hub_ids(tmp_path: Path) -> None:
    from pipeline.sources.files import is_hub_id

    assert is_hub_id("Anthropic/hh-rlhf") and is_hub_id("hf://datasets/Anthropic/hh-rlhf")
    assert is_hub_id("org/data.v2")
    for name in ("data/x.jsonl", "data/x.jsonl.gz", "runs/pairs.parquet", "a/b.csv", "d/e.json",
                 "data/sub/x", "./data/x", str(tmp_path / "nope")):
        assert not is_hub_id(name), name
    for name in ("no-such-folder-for-synpref/x.jsonl", "no-such-folder-for-synpref/sub/pairs",
                 str(tmp_path / "gone.parquet")):
        with pytest.raises(SourceReadError, match=f"^file not found: {name}$"):
            load_pairs(name)


def test_hub_rows_carry_their_raw_json(tmp_path: Path) -> None:
    """A hub dataset's rows (read through `datasets`, here from a local folder) keep their raw JSON."""
    from pipeline.sources.files import iter_hub_records
    from pipeline.sources.records import PairBatchBuilder

    folder = tmp_path / "hub-like"
    folder.mkdir()
    rows = [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "score": 1.5},
            {"prompt": "Name a colour.", "chosen": "", "rejected": "Car", "score": 2.0}]
    write_jsonl(folder / "train.jsonl", rows)
    records = list(iter_hub_records(str(folder), "train"))
    assert [json.loads(r.raw) for r in records] == rows
    builder = PairBatchBuilder(source="hub", license="", label_source=None, source_file=str(folder),
                               file_label="hub", fmt="prompt-chosen-rejected")
    builder.quarantine(records[1], "chosen", "empty response")
    quarantined = builder.build().quarantine.to_pylist()[0]
    assert json.loads(quarantined["raw"]) == rows[1]


def test_chunks_parsed_on_threads_come_back_in_order_and_an_error_where_it_happened() -> None:
    from pipeline.sources.loader import ordered_map

    def work(i: int) -> int:
        if i == 37:
            raise ValueError("row 37")
        return sum(range(i * 1000))  # uneven work: later items can finish first

    got: list[int] = []
    with pytest.raises(ValueError, match="row 37"):
        for value in ordered_map(work, iter(range(100)), 3):
            got.append(value)
    assert got == [sum(range(i * 1000)) for i in range(37)]
    assert list(ordered_map(lambda i: -i, iter(range(10)), 1)) == [-i for i in range(10)]
