"""Rule verifiers, R1V2's rule-checked rewards: objective pairs are decided by rule, not by a model.

Three rules, tried in this order; the first whose inputs the pair's meta carries owns the pair:
- `code` (unit-tests): runs the pair's tests against each response's code in a sandbox
  (pipeline.judges.verifiers.code);
- `choice` (multiple-choice): compares the option letter each response picks with the reference
  letter (pipeline.judges.verifiers.choice);
- `math` (math-final-answer): extracts each response's final answer (\\boxed{...}, "the answer is
  ...", "#### ...", else the last number) and compares it with the reference.
Each decides only when exactly one response is right; otherwise it abstains (no judgment). The
rule judge's `model` setting picks the rules ("math,choice"; empty = all). Pairs a verifier
decided skip the human queue (`verifier_decided`), as R1V2's pre-verification does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import polars as pl

from schemas.attributes import PreferenceAttributes
from schemas.errors import ConfigError
from schemas.labels import CandidateOrder, Judgment, Verdict
from schemas.pair import PairRecord

from .base import Judge, LabeledExample
from .verifiers.base import Rule, RuleCheck, decide
from .verifiers.choice import ChoiceRule
from .verifiers.code import CodeRule

if TYPE_CHECKING:
    from pipeline.store import Workspace

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


class MathRule(Rule):
    """Decides pairs with a reference answer by each response's final answer."""

    name = "math"
    model = "math-final-answer"

    def applies(self, pair: PairRecord) -> bool:
        return reference_answer(pair.meta) is not None

    def check(self, pair: PairRecord) -> RuleCheck:
        reference = reference_answer(pair.meta)
        if reference is None:
            return RuleCheck(None, "rule=math no reference")
        chosen_ok = answers_match(pair.chosen, reference)
        rejected_ok = answers_match(pair.rejected, reference)
        return decide(chosen_ok, rejected_ok, f"rule=math reference={reference!r} "
                      f"chosen_correct={chosen_ok} rejected_correct={rejected_ok}")


RULES: dict[str, type[Rule]] = {"code": CodeRule, "choice": ChoiceRule, "math": MathRule}
"""Every rule, in the order they are tried on a pair."""
RULE_MODELS = frozenset(r.model for r in RULES.values())
"""The `model` of every verifier judgment: how the judgments table tells verifier votes apart."""


def parse_rules(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """Rule names from "math,choice" (or a list); empty means every rule. Kept in RULES order."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else (spec or [])) if n.strip()]
    unknown = sorted(set(names) - set(RULES))
    if unknown:
        raise ConfigError(f"unknown rule verifiers {unknown}; known: {', '.join(RULES)}")
    return tuple(n for n in RULES if not names or n in names)


class RuleJudge(Judge):
    """Decides objective pairs by the first rule that applies; abstains on the rest.

    `model` (the judge config's `model`) names the rules to run, comma-separated; empty = all.
    """

    kind = "rule"

    def __init__(self, name: str, model: str = "", *, rules: Iterable[str] | None = None,
                 code_rule: CodeRule | None = None, **kwargs: Any) -> None:
        super().__init__(name, model, **kwargs)
        self.rule_names = parse_rules(rules if rules is not None else model)
        self.rules: list[Rule] = [code_rule if n == "code" and code_rule is not None else RULES[n]()
                                  for n in self.rule_names]

    def checks(self, pairs: list[PairRecord]) -> dict[str, tuple[Rule, RuleCheck]]:
        """pair_id -> (the rule that owns it, its result), for pairs some rule applies to."""
        owned: dict[str, list[PairRecord]] = {}
        owner: dict[str, Rule] = {}
        for pair in pairs:
            rule = next((r for r in self.rules if r.applies(pair)), None)
            if rule is not None:
                owned.setdefault(rule.name, []).append(pair)
                owner[pair.pair_id] = rule
        out = {}
        for rule in self.rules:
            group = owned.get(rule.name, [])
            for pair, result in zip(group, rule.check_many(group) if group else [], strict=True):
                out[pair.pair_id] = (rule, result)
        return out

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
        checked = self.checks(pairs)
        for pair in pairs:
            if pair.pair_id not in checked:
                continue
            rule, result = checked[pair.pair_id]
            if result.verdict is None:
                continue
            out.append(Judgment(
                pair_id=pair.pair_id, judge=self.name, model=rule.model,
                sample=0, order=CandidateOrder.chosen_first, verdict=result.verdict,
                margin=1.0 if result.verdict == Verdict.chosen else -1.0,
                raw_text=result.detail, round=round,
            ))
        return out


def verifier_decided(source: Workspace | pl.DataFrame, *, round: int | None = None,
                     judges: Iterable[str] | None = None) -> set[str]:
    """Pair ids a rule verifier decided (chosen or rejected), with no verifier disagreeing.

    `source` is a workspace (its `judgments` table) or a judgments frame. Verifier judgments are
    those whose model is a rule's (RULE_MODELS), or whose judge is in `judges`. These pairs need
    no human check: leave them out of the human batch (R1V2's pre-verification).
    """
    if isinstance(source, pl.DataFrame):
        frame = source.lazy()
    else:
        if not source.has_table("judgments"):
            return set()
        frame = source.scan("judgments")
    names = list(judges or [])
    mine = pl.col("model").is_in(list(RULE_MODELS))
    if names:
        mine = mine | pl.col("judge").is_in(names)
    frame = frame.filter(mine & pl.col("verdict").is_in([Verdict.chosen.value, Verdict.rejected.value]))
    if round is not None:
        frame = frame.filter(pl.col("round") == round)
    agreed = frame.group_by("pair_id").agg(pl.col("verdict").n_unique().alias("n")).filter(pl.col("n") == 1)
    return set(agreed.collect()["pair_id"].to_list())
