"""Multiple-choice verifier: compare the option letter each response commits to with the reference.

The reference comes from the pair's meta: a letter key (`correct_option`, `answer_letter`, ...), an
index (`answer_index`, 0-based), or a reference answer that is a letter or the text of one option
(`options` / `choices`: a list, or a mapping letter -> text). A response's letter is read in
tiers, strongest first: an explicit statement ("Answer: B", "the correct option is (B)",
"\\boxed{B}", "I'd go with B", "B is correct"; the last such statement wins), a reply that
starts with the letter ("B.", "(B) Paris", "**B**") and brackets no other, a single distinct
bracketed letter anywhere, and an "answer is <option text>" statement. Abstains when either
response commits to no letter or both agree about correctness.
"""

from __future__ import annotations

import re
import string
from typing import Any

from schemas.pair import PairRecord

from .base import Rule, RuleCheck, decide

LETTER_KEYS = ("correct_option", "answer_letter", "correct_choice", "correct_letter", "answer_key",
               "mc_answer")
INDEX_KEYS = ("answer_index", "answer_idx", "correct_index")
ANSWER_KEYS = ("reference_answer", "reference", "answer", "ground_truth", "solution", "final_answer")
OPTION_KEYS = ("options", "choices")
TYPE_KEYS = ("question_type", "task_type", "type", "format")
MAX_LETTERS = 10  # A..J

_KEY = r"(?:final\s+answer|correct\s+(?:answer|option|choice)|right\s+answer|best\s+answer|answer)"
_SEP = r"\s*(?:is|:|=|-|would\s+be|should\s+be|must\s+be|will\s+be)\s*:?\s*(?:option\s+|choice\s+|letter\s+)?"
_LETTER = r"[\(\[\*\s]*([A-Ja-j])[\)\]\*]*(?![A-Za-z0-9])"
_EXPLICIT = [
    re.compile(_KEY + _SEP + _LETTER, re.IGNORECASE),
    re.compile(r"\\boxed\s*\{\s*(?:\\text\s*\{\s*)?\(?([A-Ja-j])\)?\s*\}"),
    re.compile(r"\bI\s*(?:would\s+|'d\s+|will\s+|'ll\s+)?(?:choose|pick|select|go\s+with)\s+"
               r"(?:option\s+|choice\s+)?" + _LETTER, re.IGNORECASE),
    re.compile(r"(?:option\s+|choice\s+)?\(?\b([A-J])\)?\s+is\s+(?:the\s+)?(?:correct|right|best)\b"),
]
_LEADING = re.compile(r"^\s*(?:\*\*|__)?\s*\(?([A-J])(?:\)|\.|:|\*\*|__|\s*$)")
_BRACKETED = re.compile(r"\(([A-J])\)|\*\*([A-J])\*\*|\[([A-J])\]")
_ANSWER_TEXT = re.compile(r"answer\s*(?:is|:)\s*\**([^\n]+)", re.IGNORECASE)
_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Ja-j])[\).:]\s+")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".*").strip()).lower()


def options_of(meta: dict[str, Any]) -> dict[str, str]:
    """Letter -> option text, from a list (lettered in order) or a letter-keyed mapping."""
    for key in OPTION_KEYS:
        value = meta.get(key)
        if isinstance(value, dict):
            return {str(k).strip().upper(): str(v) for k, v in value.items()
                    if len(str(k).strip()) == 1 and str(k).strip().isalpha()}
        if isinstance(value, (list, tuple)) and value:
            out = {}
            for letter, text in zip(string.ascii_uppercase, value, strict=False):
                text = str(text)
                prefix = _OPTION_PREFIX.match(text)
                out[letter] = text[prefix.end():] if prefix and prefix.group(1).upper() == letter else text
            return out
    return {}


def _as_letter(value: Any, options: dict[str, str]) -> str | None:
    if isinstance(value, str):
        text = value.strip()
        match = re.fullmatch(r"(?:answer\s*:?\s*)?[\(\[]?([A-Ja-j])[\)\]]?\.?", text, re.IGNORECASE)
        if match:
            return match.group(1).upper()
        for letter, option in options.items():
            if text and _norm(option) == _norm(text):
                return letter
    return None


def reference_letter(meta: dict[str, Any]) -> str | None:
    """The correct option's letter, or None when the pair is not a multiple-choice pair."""
    options = options_of(meta)
    for key in LETTER_KEYS:
        if (letter := _as_letter(meta.get(key), options)) is not None:
            return letter
    for key in INDEX_KEYS:
        index = meta.get(key)
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < MAX_LETTERS:
            return string.ascii_uppercase[index]
    typed = any(isinstance(meta.get(k), str) and re.search(r"multiple[\s_-]?choice|\bmcq?\b", meta[k], re.I)
                for k in TYPE_KEYS)
    if options or typed:
        for key in ANSWER_KEYS:
            if (letter := _as_letter(meta.get(key), options)) is not None:
                return letter
    return None


def _lowercase_ok(text: str, match: re.Match[str], group: int) -> bool:
    """A lowercase letter counts only when set off ("(b)", "b.", "b)" or at the end of a line)."""
    letter = match.group(group)
    if letter.isupper():
        return True
    before = text[match.start(group) - 1] if match.start(group) > 0 else ""
    after = text[match.end(group)] if match.end(group) < len(text) else "\n"
    return before in "([*" or after in ").]*:\n"


def chosen_letter(text: str, options: dict[str, str] | None = None) -> str | None:
    """The option letter a response commits to, or None when it cannot be told."""
    options = options or {}
    allowed = set(options) or set(string.ascii_uppercase[:MAX_LETTERS])
    explicit: list[tuple[int, str]] = []
    for pattern in _EXPLICIT:
        for m in pattern.finditer(text):
            if _lowercase_ok(text, m, 1) and m.group(1).upper() in allowed:
                explicit.append((m.start(), m.group(1).upper()))
    if explicit:
        return max(explicit)[1]
    bracketed = {next(g for g in m.groups() if g) for m in _BRACKETED.finditer(text)} & allowed
    lead = _LEADING.match(text)
    if lead and lead.group(1) in allowed and bracketed <= {lead.group(1)}:
        return lead.group(1)
    if len(bracketed) == 1:
        return bracketed.pop()
    if options:
        for m in reversed(list(_ANSWER_TEXT.finditer(text))):
            said = _norm(m.group(1))
            hits = [letter for letter, option in options.items() if _norm(option) and _norm(option) == said]
            if len(hits) == 1:
                return hits[0]
    return None


class ChoiceRule(Rule):
    """Decides multiple-choice pairs by the letter each response picks."""

    name = "choice"
    model = "multiple-choice"

    def applies(self, pair: PairRecord) -> bool:
        return reference_letter(pair.meta) is not None

    def check(self, pair: PairRecord) -> RuleCheck:
        reference = reference_letter(pair.meta)
        options = options_of(pair.meta)
        chosen = chosen_letter(pair.chosen, options)
        rejected = chosen_letter(pair.rejected, options)
        detail = f"rule=choice reference={reference} chosen_letter={chosen} rejected_letter={rejected}"
        if reference is None:
            return RuleCheck(None, detail)
        return decide(None if chosen is None else chosen == reference,
                      None if rejected is None else rejected == reference, detail)
