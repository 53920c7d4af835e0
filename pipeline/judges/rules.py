"""Rule verifiers: objective pairs with a reference answer in their meta are checked by rule.

The math verifier extracts each response's final answer (\\boxed{...}, "the answer is ...",
"#### ...", else the last number) and compares it with the reference. It decides only when
exactly one response matches; otherwise it abstains (returns no judgment for the pair).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from schemas.attributes import PreferenceAttributes
from schemas.labels import CandidateOrder, Judgment, Verdict
from schemas.pair import PairRecord

from .base import Judge, LabeledExample

REFERENCE_KEYS = ("reference_answer", "reference", "answer", "ground_truth", "solution", "final_answer")

_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_IS = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*\$?([^\n$]+)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def reference_answer(meta: dict[str, Any]) -> str | None:
    for key in REFERENCE_KEYS:
        value = meta.get(key)
        if isinstance(value, (str, int, float)) and str(value).strip():
            return str(value)
    return None


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def final_answer(text: str) -> str | None:
    """The final answer a response commits to, or None."""
    for found in (_boxed(text),
                  (m[-1] if (m := _HASHES.findall(text)) else None),
                  (m[-1] if (m := _ANSWER_IS.findall(text)) else None)):
        if found and found.strip():
            return found.strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """Canonical form: numbers as exact fractions, otherwise lowercase text without decoration."""
    text = answer.strip().strip(".").replace("$", "").replace("\\!", "")
    text = re.sub(r"\\(?:text|mathrm)\{([^}]*)\}", r"\1", text)
    text = re.sub(r"\\d?frac\{([^}]*)\}\{([^}]*)\}", r"\1/\2", text)
    numbers = _NUMBER.findall(text)
    if len(numbers) == 1:
        try:
            return str(Fraction(numbers[0].replace(",", "")))
        except (ValueError, ZeroDivisionError):
            pass
    return re.sub(r"\s+", " ", text).lower().strip()


def answers_match(response: str, reference: str) -> bool:
    found = final_answer(response)
    return found is not None and normalize_answer(found) == normalize_answer(
        final_answer(reference) or reference)


class RuleJudge(Judge):
    """Decides pairs that carry a reference answer; abstains on the rest."""

    kind = "rule"

    def judge(
        self,
        pairs: list[PairRecord],
        *,
        attributes: dict[str, PreferenceAttributes],
        examples: dict[str, list[LabeledExample]],
        round: int,
        seed: int = 0,
    ) -> list[Judgment]:
        out = []
        for pair in pairs:
            reference = reference_answer(pair.meta)
            if reference is None:
                continue
            chosen_ok = answers_match(pair.chosen, reference)
            rejected_ok = answers_match(pair.rejected, reference)
            if chosen_ok == rejected_ok:
                continue
            out.append(Judgment(
                pair_id=pair.pair_id, judge=self.name, model=self.model or "math-final-answer",
                sample=0, order=CandidateOrder.chosen_first,
                verdict=Verdict.chosen if chosen_ok else Verdict.rejected,
                margin=1.0 if chosen_ok else -1.0,
                raw_text=f"reference={reference!r} chosen_correct={chosen_ok} rejected_correct={rejected_ok}",
                round=round,
            ))
        return out
