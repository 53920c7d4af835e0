"""ShareGPT / LLaMA-Factory / OpenAI-messages preference rows.

`conversations` (or `messages`) holds the turns as {from, value} or {role, content}; `chosen` and
`rejected` are the final assistant turn as a message, a string, or a message list ending in it;
an optional `system` string becomes the first turn.
"""

from __future__ import annotations

from typing import Any

from pipeline.sources.records import Candidate, RowError, require, response_text, to_messages

NAME = "sharegpt"
LABEL_SOURCE = "unknown"
_USED = ("conversations", "messages", "chosen", "rejected", "system")


def matches(record: dict[str, Any]) -> bool:
    return ("conversations" in record or "messages" in record) and "chosen" in record and "rejected" in record


def parse(record: dict[str, Any]) -> Candidate:
    key = "conversations" if "conversations" in record else "messages"
    conversation = to_messages(require(record, key), key)
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise RowError("system", f"expected a string, got {type(system).__name__}")
    if system and system.strip() and not any(m["role"] == "system" for m in conversation):
        conversation.insert(0, {"role": "system", "content": system, "images": []})
    chosen = response_text(require(record, "chosen"), "chosen")
    rejected = response_text(require(record, "rejected"), "rejected")
    extras = {k: v for k, v in record.items() if k not in _USED}
    return Candidate(conversation, chosen, rejected, meta=extras)
