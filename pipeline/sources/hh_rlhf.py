"""Anthropic HH-RLHF: `chosen` and `rejected` are whole "\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts.

The conversation is the longest shared prefix that ends with an "\\n\\nAssistant:" marker; the rest
of each transcript is its final assistant turn. Cutting at the shared prefix (not at the last
marker of each side) keeps responses whole when a model wrote "Human:" inside its own answer.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.sources.records import Candidate, RowError, require_str

NAME = "hh-rlhf"
LABEL_SOURCE = "human"
_ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def matches(record: dict[str, Any]) -> bool:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    return (
        isinstance(chosen, str) and isinstance(rejected, str) and "prompt" not in record
        and _ASSISTANT in chosen and _ASSISTANT in rejected
    )


def parse(record: dict[str, Any]) -> Candidate:
    chosen = require_str(record, "chosen")
    rejected = require_str(record, "rejected")
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise RowError(name, "empty response")
    shared = _common_prefix_len(chosen, rejected)
    cut = chosen.rfind(_ASSISTANT, 0, shared)
    if cut < 0:
        raise RowError("rejected", "chosen and rejected share no conversation ending in an Assistant turn")
    end = cut + len(_ASSISTANT)
    parts = _TURN.split(chosen[:cut])
    if parts[0].strip():
        raise RowError("chosen", "transcript does not start with a Human turn")
    conversation = [
        {"role": _ROLE[parts[i]], "content": parts[i + 1].strip(), "images": []}
        for i in range(1, len(parts), 2)
    ]
    extras = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    return Candidate(conversation, chosen[end:].strip(), rejected[end:].strip(), meta=extras)


def _common_prefix_len(a: str, b: str) -> int:
    """Length of the shared prefix, compared in slices (os.path.commonprefix walks characters)."""
    n = min(len(a), len(b))
    i, step = 0, 256
    while i < n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return min(i, n)
