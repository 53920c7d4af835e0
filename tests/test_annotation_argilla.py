"""annotation/ against the real Argilla 2.8 server: settings, idempotent and interrupted pushes,
pulls through the randomized order, cannot-decide, and connection failures."""

from __future__ import annotations

import time
import uuid

import pytest

from annotation.client import ArgillaUnavailable, connect
from annotation.pull import REASON_CANNOT_DECIDE, REASON_DISCARDED_IN_UI, pull_verifications
from annotation.push import ensure_dataset, push_pairs
from annotation.records import label_for_verdict
from annotation.settings import (
    LABEL_CANNOT_DECIDE,
    META_ORDER,
    META_PRIORITY,
    build_settings,
    load_guidelines,
)
from schemas.labels import CandidateOrder, Verdict, VerificationStatus
from tests.annotation_helpers import (
    respond,
    sample_attributes,
    sample_judgments,
    sample_pairs,
    server_records,
)
from tests.fixtures.argilla_server import ArgillaServer, free_port

pytestmark = pytest.mark.argilla


@pytest.fixture(scope="module")
def client(argilla_server: ArgillaServer):
    return connect(argilla_server.url, api_key=argilla_server.owner.api_key)


def new_dataset(client, server: ArgillaServer, *, overlap: int = 1):
    return ensure_dataset(client, f"verify-{uuid.uuid4().hex[:8]}", server.workspace, overlap=overlap)


def test_settings_on_the_server(client, argilla_server: ArgillaServer) -> None:
    dataset = new_dataset(client, argilla_server, overlap=2)
    fetched = client.datasets(dataset.name, workspace=argilla_server.workspace)
    settings = fetched.settings
    assert [f.name for f in settings.fields] == ["conversation", "candidate_1", "candidate_2", "attributes"]
    assert settings.fields["conversation"].type == "chat"
    questions = {q.name: q for q in settings.questions}
    assert questions["preference"].labels == ["candidate_1", "candidate_2", LABEL_CANNOT_DECIDE]
    assert questions["confidence"].values == [1, 2, 3, 4, 5]
    assert questions["rationale"].required is False
    metadata = {m.name: m for m in settings.metadata}
    assert metadata["order"].visible_for_annotators is False and metadata["priority"].visible_for_annotators
    assert settings.distribution.min_submitted == 2
    assert settings.guidelines.strip() == load_guidelines().strip()
    assert ensure_dataset(client, dataset.name, argilla_server.workspace).id == dataset.id


def test_a_foreign_dataset_is_refused(client, argilla_server: ArgillaServer) -> None:
    import argilla as rg

    name = f"other-{uuid.uuid4().hex[:8]}"
    settings = rg.Settings(fields=[rg.TextField("text", client=client)], questions=[
        rg.LabelQuestion("label", labels=["a", "b"], client=client)])  # fmt: skip
    rg.Dataset(name=name, workspace=argilla_server.workspace, settings=settings, client=client).create()
    with pytest.raises(ValueError, match="not a synpref verification dataset"):
        ensure_dataset(client, name, argilla_server.workspace)
    assert build_settings(client, overlap=1).distribution.min_submitted == 1


def test_push_is_idempotent_and_priority_ordered(client, argilla_server: ArgillaServer) -> None:
    pairs = sample_pairs(16)
    attrs, judgments = sample_attributes(pairs), sample_judgments(pairs)
    dataset = new_dataset(client, argilla_server)
    first = push_pairs(client, dataset, pairs[:12], attrs, judgments, round=1, batch_size=5)
    assert (first.created, first.skipped, first.batches) == (12, 0, 3)
    again = push_pairs(client, dataset, pairs[:12], attrs, judgments, round=1, batch_size=5)
    assert (again.created, again.skipped, again.batches) == (0, 12, 0)
    more = push_pairs(client, dataset, pairs, attrs, judgments, round=2, batch_size=5)
    assert (more.created, more.skipped) == (4, 12)
    update = push_pairs(client, dataset, pairs, attrs, judgments, round=2, update_existing=True)
    assert (update.created, update.updated) == (0, 16)

    records = server_records(argilla_server, dataset.id)
    assert sorted(r["external_id"] for r in records) == sorted(p.pair_id for p in pairs)
    by_id = {p.pair_id: p for p in pairs}
    first_push = [r for r in records if r["external_id"] in {p.pair_id for p in pairs[:12]}]
    priorities = [r["metadata"][META_PRIORITY] for r in first_push]
    assert priorities == sorted(priorities), "objective, low-controversy pairs are inserted first"
    for record in records:
        order = CandidateOrder(record["metadata"][META_ORDER])
        pair = by_id[record["external_id"]]
        shown_first = pair.chosen if order == CandidateOrder.chosen_first else pair.rejected
        assert record["fields"]["candidate_1"] == shown_first
        suggestion = next(
            s for s in record["suggestions"] if s["question_id"] and s["agent"] != "synpref-attributes"
        )
        assert suggestion["value"] == label_for_verdict(Verdict.chosen, order)
        assert suggestion["agent"] == "test/judge-a test/judge-b" and suggestion["score"] == 1.0


def test_interrupted_push_completes_on_rerun(client, argilla_server: ArgillaServer) -> None:
    pairs = sample_pairs(12)
    attrs = sample_attributes(pairs)
    dataset = new_dataset(client, argilla_server)

    def stop_after_first_batch(batches: int, sent: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        push_pairs(client, dataset, pairs, attrs, batch_size=5, on_batch=stop_after_first_batch)
    assert len(server_records(argilla_server, dataset.id)) == 5
    rerun = push_pairs(client, dataset, pairs, attrs, batch_size=5)
    assert (rerun.created, rerun.skipped) == (7, 5)
    ids = [r["external_id"] for r in server_records(argilla_server, dataset.id)]
    assert len(ids) == len(set(ids)) == 12


def test_pull_maps_verdicts_back_through_the_order(client, argilla_server: ArgillaServer) -> None:
    pairs = sample_pairs(8)
    dataset = new_dataset(client, argilla_server, overlap=2)
    push_pairs(client, dataset, pairs, sample_attributes(pairs), round=3)
    records = {r["external_id"]: r for r in server_records(argilla_server, dataset.id)}
    ann1, ann2 = argilla_server.annotators
    orders = {pid: CandidateOrder(r["metadata"][META_ORDER]) for pid, r in records.items()}
    flipped = next(pid for pid, o in orders.items() if o == CandidateOrder.rejected_first)
    straight = next(pid for pid, o in orders.items() if o == CandidateOrder.chosen_first)
    others = [pid for pid in records if pid not in (flipped, straight)]

    # Candidate 1 on a rejected_first record is the stored REJECTED response.
    respond(argilla_server, ann1, records[flipped], "candidate_1", rationale="the other one is wrong")
    respond(argilla_server, ann2, records[flipped], "candidate_1")
    respond(argilla_server, ann1, records[straight], "candidate_1", confidence=5)
    respond(argilla_server, ann2, records[straight], LABEL_CANNOT_DECIDE, confidence=1)
    respond(argilla_server, ann1, records[others[0]], None, status="discarded")
    respond(argilla_server, ann1, records[others[1]], "candidate_2", status="draft")

    result = pull_verifications(client, dataset)
    got = {(v.pair_id, v.annotator): v for v in result.verifications}
    assert len(result.verifications) == 5 and result.problems == []
    assert result.records_total == 8 and result.records_answered == 3
    assert got[(flipped, ann1.username)].verdict == Verdict.rejected
    assert got[(flipped, ann1.username)].rationale == "the other one is wrong"
    assert got[(flipped, ann2.username)].verdict == Verdict.rejected
    assert got[(straight, ann1.username)].verdict == Verdict.chosen
    assert got[(straight, ann1.username)].confidence == 5 and got[(straight, ann1.username)].objective is True
    undecided = got[(straight, ann2.username)]
    assert undecided.status == VerificationStatus.discarded and undecided.reason == REASON_CANNOT_DECIDE
    assert undecided.verdict == Verdict.tie
    broken = got[(others[0], ann1.username)]
    assert broken.status == VerificationStatus.discarded and broken.reason == REASON_DISCARDED_IN_UI
    assert (others[1], ann1.username) not in got, "drafts are not pulled"
    assert all(v.round == 3 and v.submitted_at is not None and v.record_id for v in result.verifications)


def test_unreachable_server_fails_fast_and_clearly() -> None:
    started = time.monotonic()
    with pytest.raises(ArgillaUnavailable, match="not reachable"):
        connect(f"http://127.0.0.1:{free_port()}", api_key="some-key-1234")
    assert time.monotonic() - started < 10


def test_wrong_or_missing_key_is_named_and_never_echoed(
    argilla_server: ArgillaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "wrong-key-" + uuid.uuid4().hex
    monkeypatch.setenv("SYNPREF_TEST_KEY", secret)
    with pytest.raises(ArgillaUnavailable, match="rejected the API key") as info:
        connect(argilla_server.url, "SYNPREF_TEST_KEY")
    assert secret not in str(info.value)
    monkeypatch.delenv("SYNPREF_TEST_KEY")
    with pytest.raises(ArgillaUnavailable, match="SYNPREF_TEST_KEY"):
        connect(argilla_server.url, "SYNPREF_TEST_KEY")
    monkeypatch.setenv("SYNPREF_TEST_KEY", argilla_server.annotators[0].api_key)
    assert (
        connect(argilla_server.url, "SYNPREF_TEST_KEY").me.username == argilla_server.annotators[0].username
    )
