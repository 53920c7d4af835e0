"""The preference pair: the record every synpref table is keyed by.

A pair is a conversation (all turns before the final assistant turn), the chosen and the
rejected final assistant turn, and where it came from. `pair_id` is a stable hash of the
normalized conversation + chosen + rejected, so the same pair gets the same id on every
machine and every run.
"""

from __future__ import annotations

import json
import re
import unicodedata
from enum import StrEnum
from typing import Any

import pyarrow as pa
import xxhash
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PAIR_SCHEMA_VERSION = 1

_WHITESPACE = re.compile(r"\s+")


class LabelSource(StrEnum):
    """Who decided which response is chosen in the source data."""

    human = "human"
    ai = "ai"
    unknown = "unknown"


class Role(StrEnum):
    system = "system"
    user = "user"
    assistant = "assistant"
    tool = "tool"


class ImageRef(BaseModel):
    """An image attached to a message: where it came from, pinned by its sha256.

    Ingest stores the bytes once in the workspace (`pipeline.images`); `sha256` is the key to load
    them, `uri` is provenance only. An http(s) image not fetched keeps sha256 null. width, height
    and format are null in pools written before they existed.
    """

    model_config = ConfigDict(frozen=True)

    uri: str
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str
    images: tuple[ImageRef, ...] = ()


class PairRecord(BaseModel):
    """One preference pair, as stored in the workspace's `pool` table."""

    model_config = ConfigDict(frozen=True)

    pair_id: str = ""
    conversation: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str
    source_id: str = ""
    label_source: LabelSource = LabelSource.unknown
    license: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    ingest_seq: int = -1

    @field_validator("chosen", "rejected")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("response is empty")
        return value

    @model_validator(mode="after")
    def _check_pair(self) -> PairRecord:
        if not self.conversation:
            raise ValueError("conversation has no turns")
        if normalize_text(self.chosen) == normalize_text(self.rejected):
            raise ValueError("chosen and rejected are identical")
        expected = compute_pair_id(self.conversation, self.chosen, self.rejected)
        if not self.pair_id:
            object.__setattr__(self, "pair_id", expected)
        elif self.pair_id != expected:
            raise ValueError(f"pair_id {self.pair_id} does not match content ({expected})")
        return self

    def to_row(self) -> dict[str, Any]:
        """The row as the pool's Arrow schema stores it."""
        return {
            "pair_id": self.pair_id,
            "conversation": [
                {
                    "role": m.role.value,
                    "content": m.content,
                    "images": [
                        {"uri": i.uri, "sha256": i.sha256, "width": i.width, "height": i.height,
                         "format": i.format}
                        for i in m.images
                    ],
                }
                for m in self.conversation
            ],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "source": self.source,
            "source_id": self.source_id,
            "label_source": self.label_source.value,
            "license": self.license,
            "meta": json.dumps(self.meta, ensure_ascii=False, sort_keys=True),
            "ingest_seq": self.ingest_seq,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PairRecord:
        meta = row.get("meta") or "{}"
        return cls(
            pair_id=row["pair_id"],
            conversation=tuple(
                Message(
                    role=m["role"],
                    content=m["content"],
                    images=tuple(
                        ImageRef(**{k: v for k, v in i.items() if k in ImageRef.model_fields})
                        for i in (m.get("images") or [])
                    ),
                )
                for m in row["conversation"]
            ),
            chosen=row["chosen"],
            rejected=row["rejected"],
            source=row["source"],
            source_id=row.get("source_id") or "",
            label_source=row.get("label_source") or "unknown",
            license=row.get("license") or "",
            meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
            ingest_seq=row.get("ingest_seq", -1),
        )


def normalize_text(text: str) -> str:
    """Key normalization: NFC, whitespace runs collapsed, ends stripped.

    Stored content keeps its original formatting; only ids and dedup keys use this.
    """
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def compute_pair_id(
    conversation: tuple[Message, ...] | list[Message] | list[dict[str, Any]],
    chosen: str,
    rejected: str,
) -> str:
    """Stable 128-bit hex id of the normalized conversation + chosen + rejected.

    A turn with images adds their keys (sha256, or `uri:<uri>` for an unfetched reference) as a
    third element, so pairs that differ only by an image differ; text-only turns hash as before.
    """
    turns: list[list[Any]] = []
    for m in conversation:
        role = m["role"] if isinstance(m, dict) else m.role
        content = m["content"] if isinstance(m, dict) else m.content
        turn: list[Any] = [str(role), normalize_text(content)]
        keys = image_keys(m)
        if keys:
            turn.append(keys)
        turns.append(turn)
    payload = json.dumps(
        [turns, normalize_text(chosen), normalize_text(rejected)],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return xxhash.xxh3_128_hexdigest(payload.encode("utf-8"))


def image_keys(message: Message | dict[str, Any]) -> list[str]:
    """The identity of a message's images, in order: sha256, or `uri:<uri>` when not pinned."""
    images = message.get("images") if isinstance(message, dict) else message.images
    keys = []
    for i in images or ():
        sha = i.get("sha256") if isinstance(i, dict) else i.sha256
        uri = i.get("uri") if isinstance(i, dict) else i.uri
        keys.append(sha if sha else f"uri:{uri}")
    return keys


def render_conversation(conversation: Any, *, max_chars: int | None = None) -> str:
    """Plain-text view of a conversation ("User: ...\\n\\nAssistant: ..."), for embedders and RMs.

    With `max_chars`, the oldest text is cut first so the latest turns survive.
    """
    parts = []
    for m in conversation:
        role = m["role"] if isinstance(m, dict) else m.role.value
        content = m["content"] if isinstance(m, dict) else m.content
        parts.append(f"{str(role).capitalize()}: {content}")
    text = "\n\n".join(parts)
    if max_chars is not None and len(text) > max_chars:
        text = text[len(text) - max_chars :]
    return text


IMAGE_REF_TYPE = pa.struct([
    ("uri", pa.string()), ("sha256", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("format", pa.string()),
])
LEGACY_IMAGE_REF_TYPE = pa.struct([("uri", pa.string()), ("sha256", pa.string())])
"""The image reference of pools written before width/height/format (read as null there)."""
MESSAGE_TYPE = pa.struct(
    [("role", pa.string()), ("content", pa.string()), ("images", pa.list_(IMAGE_REF_TYPE))]
)

POOL_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("conversation", pa.list_(MESSAGE_TYPE)),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("label_source", pa.string()),
        ("license", pa.string()),
        ("meta", pa.string()),
        ("ingest_seq", pa.int64()),
    ],
    metadata={"synpref.schema": "pool", "synpref.version": str(PAIR_SCHEMA_VERSION)},
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("row", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("source", pa.string()),
    ],
    metadata={"synpref.schema": "quarantine", "synpref.version": "1"},
)

DROPPED_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("kept_pair_id", pa.string()),
        ("similarity", pa.float64()),
        ("detail", pa.string()),
    ],
    metadata={"synpref.schema": "dropped", "synpref.version": "1"},
)
"""Every pair removed by a cleaning stage (exact/semantic dedup, contamination, ties)."""
