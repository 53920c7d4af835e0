"""The data contract: pair ids, validation, Arrow round-trips, config loading."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from schemas import (
    POOL_SCHEMA,
    TABLE_SCHEMAS,
    LabelSource,
    Message,
    PairRecord,
    PreferenceAttributes,
    compute_pair_id,
    render_conversation,
)
from schemas.config import SynprefConfig

REPO = Path(__file__).resolve().parent.parent


def _pair(**overrides: object) -> PairRecord:
    fields: dict[str, object] = {
        "conversation": (Message(role="user", content="What is 2 + 2?"),),
        "chosen": "4",
        "rejected": "5",
        "source": "unit",
    }
    fields.update(overrides)
    return PairRecord(**fields)  # type: ignore[arg-type]


def test_pair_id_ignores_whitespace_but_not_content() -> None:
    a = _pair()
    b = _pair(conversation=(Message(role="user", content="  What is  2 +\n2?  "),), chosen="4 ")
    c = _pair(chosen="four")
    assert a.pair_id == b.pair_id
    assert a.pair_id != c.pair_id
    assert len(a.pair_id) == 32


def test_pair_id_depends_on_which_response_is_chosen() -> None:
    assert _pair().pair_id != _pair(chosen="5", rejected="4").pair_id


def test_pair_id_is_stable_across_releases() -> None:
    # A stored id must never change: workspaces written today are read by later versions.
    assert compute_pair_id([{"role": "user", "content": "hi"}], "hello", "go away") == (
        compute_pair_id((Message(role="user", content="hi"),), "hello", "go away")
    )
    assert _pair().pair_id == "826b0d5febfd0e0aa47cc38f5568ca41"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"chosen": "   "}, "response is empty"),
        ({"rejected": "4"}, "identical"),
        ({"conversation": ()}, "no turns"),
        ({"pair_id": "0" * 32}, "does not match"),
    ],
)
def test_invalid_pairs_are_rejected_with_a_reason(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _pair(**overrides)


def test_row_round_trip_through_arrow() -> None:
    pair = _pair(label_source=LabelSource.human, meta={"subset": "math"}, ingest_seq=7)
    table = pa.Table.from_pylist([pair.to_row()], schema=POOL_SCHEMA)
    back = PairRecord.from_row(table.to_pylist()[0])
    assert back == pair


def test_render_conversation_keeps_latest_turns_when_cut() -> None:
    conv = [{"role": "user", "content": "old " * 50}, {"role": "assistant", "content": "newest"}]
    text = render_conversation(conv, max_chars=30)
    assert len(text) == 30 and text.endswith("Assistant: newest")


def test_attributes_priority_puts_objective_low_controversy_first() -> None:
    def attrs(objectivity: str, controversiality: str) -> PreferenceAttributes:
        return PreferenceAttributes(
            task_category="math",
            objectivity=objectivity,
            controversiality=controversiality,
            desired_attributes=["correct"],
            guideline="Check the arithmetic.",
        )

    ranked = sorted(
        [attrs("subjective", "low"), attrs("objective", "high"), attrs("objective", "low")],
        key=PreferenceAttributes.priority,
    )
    assert [(a.objectivity, a.controversiality) for a in ranked] == [
        ("objective", "low"),
        ("objective", "high"),
        ("subjective", "low"),
    ]


def test_every_table_schema_is_versioned() -> None:
    for name, schema in TABLE_SCHEMAS.items():
        assert schema.metadata and b"synpref.version" in schema.metadata, name


def test_default_config_loads_and_resolves_paths() -> None:
    config = SynprefConfig.load(REPO / "examples" / "default" / "synpref.toml")
    assert config.sources, "the embedded default names its sources"
    for source in config.sources:
        assert Path(source.path).exists(), source.path


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "synpref.toml"
    bad.write_text("[loop]\niterations = 'many'\n")
    with pytest.raises(ValidationError):
        SynprefConfig.load(bad)
    bad.write_text("[loop\n")
    with pytest.raises(ValueError, match=str(bad)):
        SynprefConfig.load(bad)


def test_config_paths_resolve_against_the_file_but_hub_ids_stay(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text("")
    cfg = tmp_path / "synpref.toml"
    cfg.write_text(
        'workspace = "ws"\n'
        '[[sources]]\npath = "data/pairs.jsonl"\n'
        '[[sources]]\npath = "Anthropic/hh-rlhf"\n'
        '[[sources]]\npath = "hf://org/name"\n'
    )
    config = SynprefConfig.load(cfg)
    assert config.workspace == str(tmp_path / "ws")
    assert [s.path for s in config.sources] == [
        str(tmp_path / "data" / "pairs.jsonl"),
        "Anthropic/hh-rlhf",
        "hf://org/name",
    ]
