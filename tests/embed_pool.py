"""Small real pools for the embedding, index, dedup and retrieval tests.

Pairs come from the shared raw data (UltraFeedback prompt/chosen/rejected rows, labelled by AI,
and HH-RLHF transcripts, labelled by humans) and are written straight to the pool table.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa

from pipeline.store import Workspace
from schemas.pair import DROPPED_SCHEMA, POOL_SCHEMA, LabelSource, Message, PairRecord

_TURN = re.compile(r"\n\n(Human|Assistant): ")


def ultrafeedback_records(shared_raw: Path, n: int, *, skip: int = 0, first_seq: int = 0) -> list[PairRecord]:
    out = []
    with open(shared_raw / "ultrafeedback" / "eval_clean.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < skip:
                continue
            if len(out) == n:
                break
            row = json.loads(line)
            out.append(
                PairRecord(
                    conversation=(Message(role="user", content=row["prompt"]),),
                    chosen=row["chosen"],
                    rejected=row["rejected"],
                    source="ultrafeedback",
                    source_id=str(i),
                    label_source=LabelSource.ai,
                    ingest_seq=first_seq + len(out),
                )
            )
    return out


def hh_records(shared_raw: Path, n: int, *, first_seq: int = 0) -> list[PairRecord]:
    out = []
    with gzip.open(shared_raw / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if len(out) == n:
                break
            row = json.loads(line)
            chosen_turns = _turns(row["chosen"])
            rejected_turns = _turns(row["rejected"])
            if len(chosen_turns) < 2 or chosen_turns[:-1] != rejected_turns[:-1]:
                continue
            try:
                record = PairRecord(
                    conversation=tuple(Message(role=r, content=c) for r, c in chosen_turns[:-1]),
                    chosen=chosen_turns[-1][1],
                    rejected=rejected_turns[-1][1],
                    source="hh-rlhf/helpful-base",
                    source_id=str(i),
                    label_source=LabelSource.human,
                    ingest_seq=first_seq + len(out),
                )
            except ValueError:
                continue
            out.append(record)
    return out


def _turns(transcript: str) -> list[tuple[str, str]]:
    parts = _TURN.split("\n\n" + transcript.strip())
    return [
        ("user" if parts[i] == "Human" else "assistant", parts[i + 1].strip())
        for i in range(1, len(parts) - 1, 2)
    ]


def variant(record: PairRecord, *, conversation: str | None = None, chosen: str | None = None,
            rejected: str | None = None, label_source: LabelSource | None = None,
            ingest_seq: int | None = None) -> PairRecord:
    """A copy of `record` with some texts replaced (a constructed near-duplicate)."""
    turns = record.conversation
    if conversation is not None:
        turns = (*turns[:-1], Message(role=turns[-1].role, content=conversation))
    return PairRecord(
        conversation=turns,
        chosen=record.chosen if chosen is None else chosen,
        rejected=record.rejected if rejected is None else rejected,
        source=record.source + "/variant",
        label_source=label_source or record.label_source,
        ingest_seq=record.ingest_seq if ingest_seq is None else ingest_seq,
    )


def write_pool(ws: Workspace, records: list[PairRecord]) -> int:
    rows = [r.to_row() for r in records]
    return ws.append("pool", pa.Table.from_pylist(rows, schema=POOL_SCHEMA), unique_key="pair_id",
                     schema=POOL_SCHEMA)


def write_mixed_pool(ws: Workspace, shared_raw: Path, *, ultrafeedback: tuple[int, int],
                     hh: tuple[int, int]) -> list[str]:
    """UltraFeedback rows (how many, lines skipped) and hh-rlhf pairs (how many, first
    ingest_seq) written as the pool; their pair ids in that order."""
    pairs = ultrafeedback_records(shared_raw, ultrafeedback[0], skip=ultrafeedback[1]) + hh_records(
        shared_raw, hh[0], first_seq=hh[1])
    write_pool(ws, pairs)
    return [p.pair_id for p in pairs]


def mark_dropped(ws: Workspace, ids: list[str]) -> None:
    """Record `ids` in `dropped` as exact duplicates, as a cleaning stage would."""
    n = len(ids)
    ws.append("dropped", pa.table({
        "pair_id": ids, "stage": ["exact-dedup"] * n, "reason": ["t"] * n,
        "kept_pair_id": pa.nulls(n, pa.string()), "similarity": pa.nulls(n, pa.float64()),
        "detail": ["{}"] * n}), schema=DROPPED_SCHEMA)
