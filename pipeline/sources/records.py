"""Turning parsed rows into pool rows, quarantine rows and dropped rows.

Format parsers (one module per format family) map a source row to a `Candidate`; this module
checks what every pair must satisfy (roles, strings, valid UTF-8, non-empty and distinct
responses), computes `pair_id`, and builds the Arrow tables of `LoadedPairs`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import xxhash

from pipeline.sources.files import RawRecord
from schemas.pair import (
    DROPPED_SCHEMA,
    POOL_SCHEMA,
    QUARANTINE_SCHEMA,
    LabelSource,
    Role,
    compute_pair_id,
    normalize_text,
)

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ROLES = {r.value for r in Role}
_ROLE_ALIASES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "function_call": "tool", "ipython": "tool",
}


class RowError(ValueError):
    """A row that cannot become a pair: which field, and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


@dataclass(slots=True)
class Candidate:
    """What a format parser extracted from one row, before the checks every pair must pass."""

    conversation: list[dict[str, Any]]
    chosen: str
    rejected: str
    label_source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    drop_reason: str | None = None
    drop_detail: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    """Our field -> the source's column, so errors name what the user's file calls it."""
    sub: str = ""
    """Suffix of source_id when one row yields several pairs (a ranking: `#1`, `#2`)."""

    def source_field(self, name: str) -> str:
        base = name.split("[", 1)[0].split(".", 1)[0]
        theirs = self.columns.get(base)
        return name if theirs is None else theirs + name[len(base):]


@dataclass
class LoadedPairs:
    """A source read into the pool's shape, plus what could not (quarantine) or should not (dropped) be."""

    pairs: pa.Table
    quarantine: pa.Table
    dropped: pa.Table
    format: str
    rows_read: int = 0
    images: dict[str, Any] = field(default_factory=dict)
    """sha256 -> pipeline.images.LoadedImage of the pooled rows, for ingest to store."""

    @classmethod
    def empty(cls, fmt: str) -> LoadedPairs:
        schemas = (POOL_SCHEMA, QUARANTINE_SCHEMA, DROPPED_SCHEMA)
        return cls(*(s.empty_table() for s in schemas), fmt)

    @classmethod
    def concat(cls, parts: list[LoadedPairs], fmt: str) -> LoadedPairs:
        if not parts:
            return cls.empty(fmt)
        if len(parts) == 1:
            return cls(parts[0].pairs, parts[0].quarantine, parts[0].dropped, fmt, parts[0].rows_read,
                       parts[0].images)
        return cls(
            pa.concat_tables([p.pairs for p in parts]),
            pa.concat_tables([p.quarantine for p in parts]),
            pa.concat_tables([p.dropped for p in parts]),
            fmt,
            sum(p.rows_read for p in parts),
            {sha: img for p in parts for sha, img in p.images.items()},
        )


# -- field helpers used by every format parser -----------------------------------------------


def require(record: dict[str, Any], key: str) -> Any:
    if key not in record or record[key] is None:
        raise RowError(key, "missing field")
    return record[key]


def require_str(record: dict[str, Any], key: str) -> str:
    value = require(record, key)
    if not isinstance(value, str):
        raise RowError(key, f"expected a string, got {type(value).__name__}")
    return value


def to_messages(value: Any, field_name: str) -> list[dict[str, Any]]:
    """OpenAI ({role, content}) or ShareGPT ({from, value}) message lists, roles mapped to ours."""
    if not isinstance(value, list):
        raise RowError(field_name, f"expected a list of messages, got {type(value).__name__}")
    messages = []
    for i, m in enumerate(value):
        where = f"{field_name}[{i}]"
        if not isinstance(m, dict):
            raise RowError(where, f"expected a message object, got {type(m).__name__}")
        role = m.get("role", m.get("from"))
        if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
            raise RowError(f"{where}.role", f"unknown role {role!r}")
        content, images = _content(m.get("content", m.get("value")), f"{where}.content")
        messages.append({"role": _ROLE_ALIASES[role.lower()], "content": content, "images": images})
    return messages


def _content(value: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    if isinstance(value, str):
        return value, []
    if isinstance(value, list):  # OpenAI content parts: text and image_url
        texts, images = [], []
        for n, part in enumerate(value):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and part.get("type") in ("image_url", "image"):
                ref = part.get("image_url") or part.get("image") or {}
                uri = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(uri, str):
                    raise RowError(where, "image part without a url")
                images.append({"uri": uri, "sha256": part.get("sha256"), "field": f"{where}[{n}]"})
            else:
                raise RowError(where, "unsupported content part")
        return "\n".join(texts), images
    if value is None:
        raise RowError(where, "missing field")
    raise RowError(where, f"expected a string, got {type(value).__name__}")


def response_text(value: Any, field_name: str) -> str:
    """A final assistant turn given as a string, a message, or a message list ending in it."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value:
        last = to_messages(value, field_name)[-1]
        if last["role"] != "assistant":
            raise RowError(field_name, f"the final message is from {last['role']}, not the assistant")
        return last["content"]
    if value is None:
        raise RowError(field_name, "missing field")
    raise RowError(field_name, f"expected a string or messages, got {type(value).__name__}")


def user_turn(text: str, system: Any = None) -> list[dict[str, Any]]:
    conv = []
    if isinstance(system, str) and system.strip():
        conv.append({"role": "system", "content": system, "images": []})
    conv.append({"role": "user", "content": text, "images": []})
    return conv


# -- the builder ------------------------------------------------------------------------------


def row_id(source: str, source_id: str) -> str:
    """The `dropped` key of a source row that did not enter the pool: its origin, hashed.

    Never equal to a pair_id in practice (another 128-bit hash of other bytes), so such a row
    cannot take a pooled pair out of the active pool.
    """
    return xxhash.xxh3_128_hexdigest(f"{source}\x1f{source_id}".encode())



class PairBatchBuilder:
    """Collects the rows of one batch of one source file and builds the three tables."""

    def __init__(self, *, source: str, license: str, label_source: str | None, source_file: str,
                 file_label: str, fmt: str, images: Any = None, subset: str | None = None) -> None:
        self.source = source
        self.subset = subset
        """The file's subset within a folder source (`meta.subset` of rows that name none)."""
        self.license = license
        self.label_source = label_source
        self.source_file = source_file
        self.file_label = file_label
        self.fmt = fmt
        self.rows_read = 0
        self._pairs: dict[str, list[Any]] = {name: [] for name in POOL_SCHEMA.names}
        self._quarantine: list[dict[str, Any]] = []
        self._dropped: list[dict[str, Any]] = []
        self._image_config = images  # schemas.config.sources.ImagesConfig, or None for defaults
        self._resolver: Any = None
        self._images: dict[str, Any] = {}
        self.image_bytes = 0

    def quarantine(self, rec: RawRecord, field_name: str, reason: str) -> None:
        self._quarantine.append({
            "source_file": self.source_file, "row": rec.row, "field": field_name, "reason": reason,
            "raw": rec.raw, "source": self.source,
        })

    def add(self, rec: RawRecord, cand: Candidate) -> None:
        """Check a candidate; it becomes a pool row, a dropped row, or a quarantine row."""
        loaded: list[Any] = []
        if any(m.get("images") for m in cand.conversation):
            from pipeline.images import ImageError

            try:
                cand.conversation, loaded = self._image_resolver().resolve(cand.conversation)
            except ImageError as exc:
                self.quarantine(rec, cand.source_field(exc.field), exc.reason)
                return
        try:
            pair_id = _checked_pair_id(cand)
            label = _label(self.label_source or cand.label_source)
        except RowError as exc:
            self.quarantine(rec, cand.source_field(exc.field), exc.reason)
            return
        source_id = f"{self.file_label}:{rec.row}{cand.sub}"
        if cand.drop_reason:
            # keyed by the row, not by the content: a decided pair with the same responses
            # elsewhere must stay in the active pool
            detail = {"source": self.source, "source_id": source_id, "source_file": self.source_file,
                      "row": rec.row, "pair_id": pair_id, **cand.drop_detail}
            self._dropped.append({
                "pair_id": row_id(self.source, source_id), "stage": "ingest", "reason": cand.drop_reason,
                "kept_pair_id": "", "similarity": None,
                "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True),
            })
            return
        for img in loaded:
            if img.sha256 not in self._images:
                self._images[img.sha256] = img
                self.image_bytes += len(img.data)
        meta = dict(cand.meta)
        if rec.subset is not None:
            meta.setdefault("subset", rec.subset)
        p = self._pairs
        p["pair_id"].append(pair_id)
        p["conversation"].append(cand.conversation)
        p["chosen"].append(cand.chosen)
        p["rejected"].append(cand.rejected)
        p["source"].append(self.source)
        p["source_id"].append(source_id)
        p["label_source"].append(label)
        p["license"].append(self.license)
        p["meta"].append(json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str))
        p["ingest_seq"].append(-1)

    def _image_resolver(self) -> Any:
        if self._resolver is None:
            import os

            from pipeline.images import ImageResolver
            from schemas.config.sources import ImagesConfig

            path = os.path.abspath(self.source_file)
            base = path if os.path.isdir(path) else os.path.dirname(path) if os.path.exists(path) else None
            self._resolver = ImageResolver(self._image_config or ImagesConfig(), base, self.source_file)
        return self._resolver

    def __len__(self) -> int:
        return len(self._pairs["pair_id"]) + len(self._quarantine) + len(self._dropped)

    def build(self) -> LoadedPairs:
        return LoadedPairs(
            pa.Table.from_pydict(self._pairs, schema=POOL_SCHEMA),
            _from_rows(self._quarantine, QUARANTINE_SCHEMA),
            _from_rows(self._dropped, DROPPED_SCHEMA),
            self.fmt,
            self.rows_read,
            self._images,
        )


def _from_rows(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    # from_pydict, unlike pa.table/from_pylist, never imports pandas (a second per CLI run)
    return pa.Table.from_pydict({name: [r[name] for r in rows] for name in schema.names}, schema=schema)


def _label(value: str | None) -> str:
    if value is None:
        return LabelSource.unknown.value
    try:
        return LabelSource(value).value
    except ValueError as exc:
        raise RowError("label_source", f"must be human, ai or unknown, not {value!r}") from exc


def _checked_pair_id(cand: Candidate) -> str:
    if not cand.conversation:
        raise RowError("conversation", "no turns before the responses")
    for i, m in enumerate(cand.conversation):
        if m["role"] not in _ROLES:
            raise RowError(f"conversation[{i}].role", f"unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            kind = type(m["content"]).__name__
            raise RowError(f"conversation[{i}].content", f"expected a string, got {kind}")
        if _SURROGATE.search(m["content"]):
            raise RowError(f"conversation[{i}].content", "bad encoding: not valid UTF-8")
    for name in ("chosen", "rejected"):
        value = getattr(cand, name)
        if not isinstance(value, str):
            raise RowError(name, f"expected a string, got {type(value).__name__}")
        if _SURROGATE.search(value):
            raise RowError(name, "bad encoding: not valid UTF-8")
        if not value.strip():
            raise RowError(name, "empty response")
    if normalize_text(cand.chosen) == normalize_text(cand.rejected):
        raise RowError("rejected", "chosen and rejected are identical")
    return compute_pair_id(cand.conversation, cand.chosen, cand.rejected)
