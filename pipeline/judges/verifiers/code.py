"""Code verifier: run the pair's unit tests against each response's code in the sandbox.

Tests come from the pair's meta, in the shapes public code sets use:
- HumanEval: `test` (defines `check(candidate)`) and `entry_point` -> `check(<entry_point>)` is called;
- MBPP: `test_list` (assert lines), optional `test_setup_code` and `test_imports`;
- generic: `tests` / `test_code` / `unit_tests` as one string of code or a list of assert lines.
The response's code is its last fenced Python block (the one defining `entry_point` when given),
else the whole response when it parses as Python with a definition in it.

Verdict: chosen / rejected when exactly one response passes and the other fails. Abstains when
both pass, both fail, a response has no code, or a run timed out or could not start: a timeout
depends on the machine's load, so it is no evidence against a correct but slow solution.
"""

from __future__ import annotations

import ast
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from schemas.pair import PairRecord

from .base import Rule, RuleCheck, decide
from .sandbox import SandboxLimits, SandboxResult, run_python

TEST_KEYS = ("test", "tests", "test_code", "unit_tests", "test_list")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}


def extract_code(text: str, entry_point: str | None = None) -> str | None:
    """The response's Python code: last fitting fenced block, else the whole text if it parses."""
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    if entry_point:
        defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        if defining:
            return defining[-1]
    if blocks:
        return blocks[-1]
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    has_def = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)
    return text if has_def else None


def _lines(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value if str(v).strip())
    return ""


def build_test_program(meta: dict[str, Any]) -> str | None:
    """The test code for a pair, or None when its meta carries no tests."""
    body = ""
    for key in TEST_KEYS:
        body = _lines(meta.get(key))
        if body.strip():
            break
    if not body.strip():
        return None
    parts = [_lines(meta.get("test_imports")), _lines(meta.get("test_setup_code")), body]
    entry = meta.get("entry_point")
    if isinstance(entry, str) and entry.isidentifier() and re.search(r"\bdef\s+check\s*\(", body) \
            and not re.search(rf"^\s*check\s*\(\s*{re.escape(entry)}\s*\)", body, re.MULTILINE):
        parts.append(f"check({entry})")
    return "\n\n".join(p for p in parts if p.strip()) + "\n"


def _describe(result: SandboxResult | None) -> str:
    if result is None:
        return "no-code"
    if result.status == "pass":
        return "pass"
    return f"{result.status}({result.reason})"


class CodeRule(Rule):
    """Runs each response's code against the pair's unit tests; `workers` runs at a time."""

    name = "code"
    model = "unit-tests"

    def __init__(self, limits: SandboxLimits | None = None, workers: int | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))

    def applies(self, pair: PairRecord) -> bool:
        return build_test_program(pair.meta) is not None

    def _run(self, response: str, meta: dict[str, Any]) -> SandboxResult | None:
        entry = meta.get("entry_point") if isinstance(meta.get("entry_point"), str) else None
        code = extract_code(response, entry)
        tests = build_test_program(meta)
        if code is None or tests is None:
            return None
        return run_python(code, tests, self.limits)

    def check(self, pair: PairRecord) -> RuleCheck:
        return self.check_many([pair])[0]

    def check_many(self, pairs: list[PairRecord]) -> list[RuleCheck]:
        jobs = [(p.chosen, p.meta) for p in pairs] + [(p.rejected, p.meta) for p in pairs]
        with ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(lambda job: self._run(*job), jobs))
        out = []
        for i in range(len(pairs)):
            chosen, rejected = results[i], results[len(pairs) + i]
            detail = f"rule=code chosen={_describe(chosen)} rejected={_describe(rejected)}"
            for side, r in (("chosen", chosen), ("rejected", rejected)):
                if r is not None and r.status != "pass" and r.stderr_tail.strip():
                    detail += f" {side}_stderr={r.stderr_tail.strip().splitlines()[-1][:200]!r}"
            out.append(decide(_verdict_input(chosen), _verdict_input(rejected), detail))
        return out


def _verdict_input(result: SandboxResult | None) -> bool | None:
    """pass -> True, fail -> False; no code, timeout or a harness error -> unknown."""
    if result is None or result.status in ("timeout", "error"):
        return None
    return result.status == "pass"
