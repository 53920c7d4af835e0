"""Pull submitted and discarded responses back as Verification rows on the stored pair.

Each response is mapped back through the record's hidden candidate order, so `chosen` always
means the stored chosen response won. "Cannot decide" becomes a discarded verification with its
reason (the protocol discards undecidable pairs instead of guessing); a record discarded in the
UI is recorded the same way. Drafts and unanswered records are left for a later pull.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from annotation.client import ArgillaUnavailable
from annotation.push import PAGE_SIZE
from annotation.records import verdict_for_label
from annotation.settings import (
    LABEL_CANNOT_DECIDE,
    META_ORDER,
    META_ROUND,
    QUESTION_CONFIDENCE,
    QUESTION_OBJECTIVITY,
    QUESTION_PREFERENCE,
    QUESTION_RATIONALE,
)
from schemas.attributes import Objectivity
from schemas.labels import CandidateOrder, Verdict, Verification, VerificationStatus

if TYPE_CHECKING:
    import argilla as rg

REASON_CANNOT_DECIDE = "annotator could not decide"
REASON_DISCARDED_IN_UI = "discarded in Argilla"
ANSWERED = ["submitted", "discarded"]


@dataclass
class PullResult:
    verifications: list[Verification]
    records_total: int
    records_answered: int
    problems: list[str] = field(default_factory=list)
    """Responses that could not be mapped (record, field, reason); they are not pulled."""


def _value(values: dict[str, Any] | None, question: str) -> Any:
    entry = (values or {}).get(question)
    return entry.get("value") if isinstance(entry, dict) else None


def _timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    stamp = datetime.fromisoformat(text)
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def response_to_verification(
    record: dict[str, Any], response: dict[str, Any], annotator: str
) -> Verification:
    """One server response (JSON as the API returns it) -> a Verification on the stored pair.

    Raises ValueError naming the field when the record or response cannot be mapped.
    """
    pair_id = record.get("external_id")
    if not pair_id:
        raise ValueError("external_id: record has no pair_id")
    metadata = record.get("metadata") or {}
    try:
        order = CandidateOrder(metadata.get(META_ORDER))
    except ValueError:
        raise ValueError(
            f"metadata.{META_ORDER}: missing or unknown order {metadata.get(META_ORDER)!r}"
        ) from None
    values = response.get("values") or {}
    label = _value(values, QUESTION_PREFERENCE)
    confidence = _value(values, QUESTION_CONFIDENCE)
    objectivity = _value(values, QUESTION_OBJECTIVITY)
    common = {
        "pair_id": pair_id,
        "annotator": annotator,
        "confidence": int(confidence) if confidence is not None else None,
        "objective": None if objectivity is None else objectivity == Objectivity.objective.value,
        "rationale": _value(values, QUESTION_RATIONALE) or "",
        "submitted_at": _timestamp(response.get("updated_at") or response.get("inserted_at")),
        "record_id": str(record.get("id", "")),
        "round": int(metadata.get(META_ROUND) or 0),
    }
    status = response.get("status")
    if status == "discarded":
        return Verification(
            verdict=Verdict.invalid,
            status=VerificationStatus.discarded,
            reason=REASON_DISCARDED_IN_UI,
            **common,
        )
    if status != "submitted":
        raise ValueError(f"status: response status {status!r} is not submitted or discarded")
    if label is None:
        raise ValueError(f"values.{QUESTION_PREFERENCE}: submitted response has no preference")
    verdict = verdict_for_label(str(label), order)
    if label == LABEL_CANNOT_DECIDE:
        return Verification(
            verdict=verdict, status=VerificationStatus.discarded, reason=REASON_CANNOT_DECIDE, **common
        )
    return Verification(verdict=verdict, status=VerificationStatus.submitted, **common)


def user_names(client: rg.Argilla) -> dict[str, str]:
    """user id -> username; empty when the key may not list users (ids are used instead)."""
    reply = client.http_client.get("/api/v1/users")
    if reply.status_code != 200:
        return {}
    return {str(u["id"]): u["username"] for u in reply.json().get("items", [])}


def answered_records(client: rg.Argilla, dataset: rg.Dataset) -> Iterator[dict[str, Any]]:
    """Records with at least one submitted or discarded response, with their responses."""
    body = {
        "filters": {
            "and": [
                {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ANSWERED}
            ]
        },
        "sort": [{"scope": {"entity": "record", "property": "inserted_at"}, "order": "asc"}],
    }
    offset = 0
    while True:
        reply = client.http_client.post(
            f"/api/v1/datasets/{dataset.id}/records/search",
            params={"include": "responses", "offset": offset, "limit": PAGE_SIZE},
            json=body,
        )
        if reply.status_code != 200:
            raise ArgillaUnavailable(
                f"searching responses of {dataset.name} failed: HTTP {reply.status_code}"
            )
        items = reply.json()["items"]
        for item in items:
            yield item["record"]
        if len(items) < PAGE_SIZE:
            return
        offset += len(items)


def dataset_record_count(client: rg.Argilla, dataset: rg.Dataset) -> int:
    reply = client.http_client.get(f"/api/v1/datasets/{dataset.id}/progress")
    if reply.status_code != 200:
        raise ArgillaUnavailable(f"progress of {dataset.name} failed: HTTP {reply.status_code}")
    return int(reply.json().get("total", 0))


def pull_verifications(client: rg.Argilla, dataset: rg.Dataset) -> PullResult:
    """Every submitted/discarded response in `dataset` as a Verification (drafts are skipped)."""
    names = user_names(client)
    verifications: list[Verification] = []
    problems: list[str] = []
    answered = 0
    for record in answered_records(client, dataset):
        answered += 1
        for response in record.get("responses") or []:
            if response.get("status") not in ANSWERED:
                continue
            user_id = str(response.get("user_id", ""))
            try:
                verifications.append(response_to_verification(record, response, names.get(user_id, user_id)))
            except ValueError as exc:
                problems.append(f"record {record.get('external_id') or record.get('id')}: {exc}")
    return PullResult(
        verifications=verifications,
        records_total=dataset_record_count(client, dataset),
        records_answered=answered,
        problems=problems,
    )
