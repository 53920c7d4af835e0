"""Pairwise-judgment files: two outputs and a label saying which one is better.

- LLMBar: {input, output_1, output_2, label: 1|2}.
- OffsetBias (EvalBiasBench): {instruction, response1, response2, label: 1|2, bias}.
- PandaLM test set: {instruction, input, response1, response2, annotator1..3 in 0|1|2} where 0 is
  a tie; the majority of the three annotators decides, and a tie or an undecidable majority is
  recorded as dropped with its reason instead of becoming a pair.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipeline.sources.records import Candidate, RowError, require, require_str, user_turn

LLMBAR = "llmbar"
OFFSETBIAS = "offsetbias"
PANDALM = "pandalm"
LABEL_SOURCE = "human"
_ANNOTATORS = ("annotator1", "annotator2", "annotator3")


def matches_llmbar(record: dict[str, Any]) -> bool:
    return {"input", "output_1", "output_2", "label"} <= record.keys()


def matches_offsetbias(record: dict[str, Any]) -> bool:
    return {"instruction", "response1", "response2", "label"} <= record.keys()


def matches_pandalm(record: dict[str, Any]) -> bool:
    return {"instruction", "response1", "response2", *_ANNOTATORS} <= record.keys()


def parse_llmbar(record: dict[str, Any]) -> Candidate:
    prompt = require_str(record, "input")
    first, second = require_str(record, "output_1"), require_str(record, "output_2")
    label = _label_1_or_2(record)
    chosen, rejected = (first, second) if label == 1 else (second, first)
    extras = {k: v for k, v in record.items() if k not in ("input", "output_1", "output_2")}
    return Candidate(user_turn(prompt), chosen, rejected, meta=extras)


def parse_offsetbias(record: dict[str, Any]) -> Candidate:
    prompt = require_str(record, "instruction")
    first, second = require_str(record, "response1"), require_str(record, "response2")
    label = _label_1_or_2(record)
    chosen, rejected = (first, second) if label == 1 else (second, first)
    extras = {k: v for k, v in record.items() if k not in ("instruction", "response1", "response2")}
    return Candidate(user_turn(prompt), chosen, rejected, meta=extras)


def parse_pandalm(record: dict[str, Any]) -> Candidate:
    instruction = require_str(record, "instruction")
    extra_input = record.get("input") or ""
    if not isinstance(extra_input, str):
        raise RowError("input", f"expected a string, got {type(extra_input).__name__}")
    prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    first, second = require_str(record, "response1"), require_str(record, "response2")
    votes = []
    for key in _ANNOTATORS:
        vote = require(record, key)
        if isinstance(vote, bool) or vote not in (0, 1, 2):
            raise RowError(key, f"expected 0 (tie), 1 or 2, got {vote!r}")
        votes.append(int(vote))
    extras = {k: v for k, v in record.items()
              if k not in ("instruction", "input", "response1", "response2", *_ANNOTATORS)}
    extras["votes"] = votes
    winner, count = Counter(votes).most_common(1)[0]
    if count < 2:
        return Candidate(user_turn(prompt), first, second, meta=extras,
                         drop_reason="undecidable-majority", drop_detail={"votes": votes})
    if winner == 0:
        return Candidate(user_turn(prompt), first, second, meta=extras,
                         drop_reason="tie", drop_detail={"votes": votes})
    chosen, rejected = (first, second) if winner == 1 else (second, first)
    return Candidate(user_turn(prompt), chosen, rejected, meta=extras)


def _label_1_or_2(record: dict[str, Any]) -> int:
    label = require(record, "label")
    if isinstance(label, str) and label.strip() in ("1", "2"):
        label = int(label)
    if isinstance(label, bool) or label not in (1, 2):
        raise RowError("label", f"expected 1 or 2, got {label!r}")
    return int(label)
