"""Any table of pairs with a column map: JSONL, JSON, Parquet, CSV or a hub dataset.

The map names, for each of our fields, the source's column: `prompt` (or `conversation`),
`chosen`, `rejected`, optionally `system`. Unmapped fields fall back to their own names; the
mapped row is then read as prompt/chosen/rejected (strings or message lists).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.sources import prompt_chosen_rejected, sharegpt
from pipeline.sources.records import Candidate, RowError
from schemas.errors import ConfigError

NAME = "generic"
LABEL_SOURCE = "unknown"
FIELDS = ("prompt", "conversation", "chosen", "rejected", "system")


def check_column_map(column_map: dict[str, str]) -> None:
    unknown = sorted(set(column_map) - set(FIELDS))
    if unknown:
        raise ConfigError(f"column map: unknown field(s) {unknown}; map any of {list(FIELDS)} to a column")


def parse(record: dict[str, Any], column_map: dict[str, str]) -> Candidate:
    mapped: dict[str, Any] = {}
    used = set()
    for ours in FIELDS:
        theirs = column_map.get(ours, ours)
        if theirs in record:
            mapped[ours] = _maybe_json(record[theirs])
            used.add(theirs)
    extras = {k: v for k, v in record.items() if k not in used}
    try:
        if "conversation" in mapped:
            if "prompt" in mapped:
                raise RowError("conversation", "map either prompt or conversation, not both")
            mapped["conversations"] = mapped.pop("conversation")
            cand = sharegpt.parse(mapped)
        else:
            cand = prompt_chosen_rejected.parse(mapped)
    except RowError as exc:
        # name the user's column, not ours
        ours = exc.field.split("[", 1)[0].split(".", 1)[0].replace("conversations", "conversation")
        theirs = column_map.get(ours, ours)
        raise RowError(exc.field.replace(exc.field.split("[", 1)[0].split(".", 1)[0], theirs, 1),
                       exc.reason) from None
    cand.meta = extras
    cand.columns = {ours: theirs for ours, theirs in column_map.items() if ours in ("chosen", "rejected")}
    if isinstance(mapped.get("prompt"), str) and "prompt" in column_map:
        cand.columns["conversation"] = column_map["prompt"]
    return cand


def _maybe_json(value: Any) -> Any:
    """CSV cells hold message lists as JSON text."""
    if isinstance(value, str) and value[:1] == "[" and value[-1:] == "]":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
