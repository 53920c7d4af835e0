"""prompt / chosen / rejected rows: UltraFeedback-binarized, TRL preference datasets, DPO JSONL.

`prompt` is a string or a message list; `chosen` / `rejected` are strings or message lists ending
in the assistant turn. Without `prompt` (TRL's implicit-prompt format) both responses are whole
conversations and their shared prefix is the conversation. LLaMA-Factory's Alpaca-style rows
(`instruction`, optional `input`, `system` and `history` of [user, assistant] pairs) read the same.
"""

from __future__ import annotations

from typing import Any

from pipeline.sources.records import (
    Candidate,
    RowError,
    require,
    response_text,
    to_messages,
    user_turn,
)

NAME = "prompt-chosen-rejected"
LABEL_SOURCE = "unknown"
_USED = ("prompt", "chosen", "rejected", "system")
_ALPACA = ("instruction", "input", "history")


def matches(record: dict[str, Any]) -> bool:
    if "chosen" not in record or "rejected" not in record:
        return False
    if "prompt" in record or "instruction" in record:
        return True
    return isinstance(record["chosen"], list) and isinstance(record["rejected"], list)


def parse(record: dict[str, Any]) -> Candidate:
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise RowError("system", f"expected a string, got {type(system).__name__}")
    extras = {k: v for k, v in record.items() if k not in _USED}
    if "prompt" not in record and "instruction" in record:
        extras = {k: v for k, v in extras.items() if k not in _ALPACA}
        conversation = _alpaca_conversation(record, system)
        chosen = response_text(require(record, "chosen"), "chosen")
        rejected = response_text(require(record, "rejected"), "rejected")
        return Candidate(conversation, chosen, rejected, meta=extras)
    if "prompt" not in record and isinstance(record.get("chosen"), list):
        return _implicit_prompt(record, extras)
    prompt = require(record, "prompt")
    if isinstance(prompt, str):
        conversation = user_turn(prompt, system)
    elif isinstance(prompt, list):
        conversation = to_messages(prompt, "prompt")
        if system and system.strip():
            conversation.insert(0, {"role": "system", "content": system, "images": []})
    else:
        raise RowError("prompt", f"expected a string or messages, got {type(prompt).__name__}")
    chosen = response_text(require(record, "chosen"), "chosen")
    rejected = response_text(require(record, "rejected"), "rejected")
    return Candidate(conversation, chosen, rejected, meta=extras)


def _implicit_prompt(record: dict[str, Any], extras: dict[str, Any]) -> Candidate:
    chosen = to_messages(require(record, "chosen"), "chosen")
    rejected = to_messages(require(record, "rejected"), "rejected")
    if not chosen or chosen[-1]["role"] != "assistant":
        raise RowError("chosen", "the final message is not from the assistant")
    if not rejected or rejected[-1]["role"] != "assistant":
        raise RowError("rejected", "the final message is not from the assistant")
    if chosen[:-1] != rejected[:-1]:
        raise RowError("rejected", "chosen and rejected conversations differ before the final turn")
    return Candidate(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], meta=extras)


def _alpaca_conversation(record: dict[str, Any], system: str | None) -> list[dict[str, Any]]:
    instruction = require(record, "instruction")
    extra = record.get("input") or ""
    if not isinstance(instruction, str):
        raise RowError("instruction", f"expected a string, got {type(instruction).__name__}")
    if not isinstance(extra, str):
        raise RowError("input", f"expected a string, got {type(extra).__name__}")
    conversation = user_turn("", system)[:-1]
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RowError("history", f"expected a list of [user, assistant] pairs, got {type(history).__name__}")
    for i, turn in enumerate(history):
        if not (isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise RowError(f"history[{i}]", "expected a [user, assistant] pair of strings")
        conversation += [{"role": "user", "content": turn[0], "images": []},
                         {"role": "assistant", "content": turn[1], "images": []}]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [*conversation, {"role": "user", "content": prompt, "images": []}]
