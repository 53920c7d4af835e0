"""Push pairs to the verification dataset: idempotent by pair_id, in protocol priority order.

Every record's Argilla id is its pair_id, and records already on the server are skipped (or
upserted with `update_existing`), so re-pushing never duplicates and a push interrupted midway
completes on the next run: each batch is committed by the server before the next is sent.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from annotation.client import ArgillaUnavailable
from annotation.records import ImageResolver, RecordPayload, build_payloads
from annotation.settings import (
    FIELD_CANDIDATE_1,
    QUESTION_PREFERENCE,
    build_settings,
    dataset_image_fields,
)
from schemas.attributes import PreferenceAttributes
from schemas.labels import Judgment
from schemas.pair import PairRecord

if TYPE_CHECKING:
    import argilla as rg

PAGE_SIZE = 1000
"""The server's maximum page size for listing records."""


@dataclass(frozen=True)
class PushStats:
    dataset: str
    workspace: str
    requested: int
    created: int
    updated: int
    skipped: int
    batches: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        sent = self.created + self.updated
        return sent / self.seconds if self.seconds > 0 else 0.0


def ensure_dataset(
    client: rg.Argilla,
    name: str,
    workspace: str,
    *,
    overlap: int = 1,
    guidelines: str | None = None,
    image_fields: int = 0,
) -> rg.Dataset:
    """The verification dataset, created (with its workspace) when absent.

    `image_fields`: ImageFields to create it with (Argilla fixes fields at creation, so a dataset
    that will show image-text pairs needs them from the start; see `image_fields_needed`)."""
    import argilla as rg
    from argilla._exceptions import ArgillaError

    try:
        with warnings.catch_warnings():
            # The SDK warns on every lookup of an absent name; absence is expected here.
            warnings.simplefilter("ignore")
            ws = client.workspaces(workspace)
            dataset = client.datasets(name, workspace=workspace) if ws is not None else None
        if ws is None:
            ws = rg.Workspace(name=workspace, client=client).create()
        if dataset is None:
            settings = build_settings(client, overlap=overlap, guidelines=guidelines,
                                      image_fields=image_fields)
            dataset = rg.Dataset(name=name, workspace=workspace, settings=settings, client=client).create()
    except ArgillaError as exc:
        raise ArgillaUnavailable(f"cannot open dataset {workspace}/{name} in Argilla: {exc}") from None
    names = {q.name for q in dataset.settings.questions} | {f.name for f in dataset.settings.fields}
    if QUESTION_PREFERENCE not in names or FIELD_CANDIDATE_1 not in names:
        raise ValueError(
            f"Argilla dataset {workspace}/{name} exists but is not a synpref verification dataset "
            f"(no {QUESTION_PREFERENCE!r} question); choose another [argilla] dataset name"
        )
    return dataset


def find_dataset(client: rg.Argilla, name: str, workspace: str) -> rg.Dataset | None:
    """The dataset if it exists (no creation), for pull and status."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if client.workspaces(workspace) is None:
            return None
        return client.datasets(name, workspace=workspace)


def list_records(client: rg.Argilla, dataset: rg.Dataset, *, include: str | None = None) -> Iterable[dict]:
    """Every record of the dataset as the server's JSON, page by page (stable insertion order)."""
    offset = 0
    while True:
        params: dict[str, Any] = {"offset": offset, "limit": PAGE_SIZE}
        if include:
            params["include"] = include
        reply = client.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params=params)
        if reply.status_code != 200:
            raise ArgillaUnavailable(f"listing records of {dataset.name} failed: HTTP {reply.status_code}")
        items = reply.json()["items"]
        yield from items
        if len(items) < PAGE_SIZE:
            return
        offset += len(items)


def existing_record_ids(client: rg.Argilla, dataset: rg.Dataset) -> set[str]:
    """External ids (= pair_ids) of the records already in the dataset."""
    return {r["external_id"] for r in list_records(client, dataset) if r.get("external_id")}


def _to_record(payload: RecordPayload) -> rg.Record:
    import argilla as rg

    return rg.Record(
        id=payload.id,
        fields=payload.fields,
        metadata=payload.metadata,
        suggestions=[rg.Suggestion(**s) for s in payload.suggestions],
    )


def push_payloads(
    client: rg.Argilla,
    dataset: rg.Dataset,
    payloads: Sequence[RecordPayload],
    *,
    batch_size: int = 200,
    update_existing: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> PushStats:
    """Send payloads in their given order, `batch_size` per request; `on_batch(batches, sent)`."""
    started = time.perf_counter()
    existing = existing_record_ids(client, dataset)
    unique = list({p.id: p for p in payloads}.values())
    todo = [p for p in unique if update_existing or p.id not in existing]
    batches = 0
    for start in range(0, len(todo), max(1, batch_size)):
        batch = todo[start : start + batch_size]
        # The SDK draws a tqdm bar per call on stderr; batches are reported through on_batch instead.
        with contextlib.redirect_stderr(io.StringIO()):
            dataset.records.log([_to_record(p) for p in batch], batch_size=len(batch))
        batches += 1
        if on_batch is not None:
            on_batch(batches, start + len(batch))
    updated = sum(1 for p in todo if p.id in existing)
    return PushStats(
        dataset=dataset.name,
        workspace=dataset.workspace.name,
        requested=len(unique),
        created=len(todo) - updated,
        updated=updated,
        skipped=len(unique) - len(todo),
        batches=batches,
        seconds=time.perf_counter() - started,
    )


def push_pairs(
    client: rg.Argilla,
    dataset: rg.Dataset,
    pairs: Iterable[PairRecord],
    attributes: dict[str, PreferenceAttributes],
    judgments: Iterable[Judgment] = (),
    *,
    round: int = 0,
    seed: int = 0,
    batch_size: int = 200,
    update_existing: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
    resolve_image: ImageResolver | None = None,
) -> PushStats:
    """Pairs + their attributes + judge votes (as suggestions) into `dataset`, priority first.

    Images fill the dataset's ImageFields, as data URLs from `resolve_image`."""
    payloads = build_payloads(pairs, attributes, judgments, round=round, seed=seed,
                              image_fields=dataset_image_fields(dataset), resolve_image=resolve_image)
    return push_payloads(
        client, dataset, payloads, batch_size=batch_size, update_existing=update_existing, on_batch=on_batch
    )
