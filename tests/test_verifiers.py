"""Rule verifiers: the code sandbox (tests, timeouts, network, memory), multiple choice, the rule
judge's configuration and which pairs skip the human queue."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline.judges import build_judges, judge_pairs
from pipeline.judges.rules import RuleJudge, parse_rules, verifier_decided
from pipeline.judges.verifiers.choice import ChoiceRule, chosen_letter, reference_letter
from pipeline.judges.verifiers.code import CodeRule, build_test_program, extract_code
from pipeline.judges.verifiers.sandbox import SandboxLimits, run_python
from schemas.config.judges import JudgeConfig
from schemas.labels import Verdict
from tests.fixtures.judge_pairs import make_pair, workspace_with_pairs

FAST = SandboxLimits(timeout_s=10.0)
HUMANEVAL_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def fenced(code: str, lead: str = "Here is my solution:") -> str:
    return f"{lead}\n\n```python\n{code}\n```\n"


def add_pair(chosen: str, rejected: str, **meta: object):
    return make_pair("Write add(a, b) returning the sum.", chosen, rejected, **meta)


GOOD = fenced("def add(a, b):\n    return a + b")
BAD = fenced("def add(a, b):\n    return a - b")


def test_code_verifier_runs_the_tests_and_decides() -> None:
    rule = CodeRule(FAST)
    humaneval = add_pair(GOOD, BAD, test=HUMANEVAL_TEST, entry_point="add")
    flipped = add_pair(BAD, GOOD, test=HUMANEVAL_TEST, entry_point="add")
    mbpp = add_pair(GOOD, BAD, test_list=["assert add(1, 2) == 3", "assert add(0, 0) == 0"])
    also_good = fenced("def add(a, b):\n    return sum([a, b])")
    both_pass = add_pair(GOOD, also_good, tests="assert add(4, 5) == 9")
    no_code = add_pair(GOOD, "Just add the numbers.", tests="assert add(4, 5) == 9")
    results = rule.check_many([humaneval, flipped, mbpp, both_pass, no_code])
    assert [r.verdict for r in results] == [Verdict.chosen, Verdict.rejected, Verdict.chosen, None, None]
    assert "chosen=pass rejected=fail(assertion)" in results[0].detail
    assert "no-code" in results[4].detail


def test_infinite_loop_times_out_and_the_verifier_abstains_within_the_limit() -> None:
    limits = SandboxLimits(timeout_s=2.0)
    pair = add_pair(GOOD, fenced("def add(a, b):\n    while True:\n        pass"),
                    test=HUMANEVAL_TEST, entry_point="add")
    start = time.monotonic()
    result = CodeRule(limits).check(pair)
    elapsed = time.monotonic() - start
    assert result.verdict is None
    assert "rejected=timeout" in result.detail
    assert elapsed < limits.timeout_s + 5.0, elapsed


def test_a_network_connection_is_blocked_and_fails_the_response() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        leaky = fenced("import socket\n"
                       f"socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n"
                       "def add(a, b):\n    return a + b")
        raw = run_python(extract_code(leaky) or "", "assert add(1, 2) == 3", FAST)
        assert (raw.status, raw.reason) == ("fail", "blocked"), raw
        assert "socket" in raw.stderr_tail
        connect = f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))"
        lowlevel = run_python(connect, "", FAST)
        assert (lowlevel.status, lowlevel.reason) == ("fail", "blocked")
        # The child has exited: a connection it made would sit in the listener's backlog now.
        with pytest.raises(BlockingIOError):
            listener.accept()
    decided = CodeRule(FAST).check(add_pair(GOOD, leaky, test=HUMANEVAL_TEST, entry_point="add"))
    assert decided.verdict == Verdict.chosen
    assert "rejected=fail(blocked)" in decided.detail


def test_a_memory_bomb_hits_the_address_space_limit() -> None:
    limits = SandboxLimits(timeout_s=10.0, memory_mb=256)
    start = time.monotonic()
    bomb = run_python("hog = bytearray(2 * 2**30)", "", limits)
    assert (bomb.status, bomb.reason) == ("fail", "memory"), bomb
    growing = run_python("hog = []\nwhile True:\n    hog.append(' ' * 2**20)", "", limits)
    assert (growing.status, growing.reason) == ("fail", "memory"), growing
    assert time.monotonic() - start < 15.0
    pair = add_pair(GOOD, fenced("def add(a, b):\n    cache = [0] * (10**10)\n    return a + b"),
                    test=HUMANEVAL_TEST, entry_point="add")
    assert CodeRule(limits).check(pair).verdict == Verdict.chosen


def test_sandbox_blocks_processes_and_outside_writes_and_early_exits_do_not_pass(tmp_path: Path) -> None:
    outside = tmp_path / "escaped.txt"
    wrote = run_python(f"open({str(outside)!r}, 'w').write('x')", "", FAST)
    assert (wrote.status, wrote.reason) == ("fail", "blocked") and not outside.exists()
    scratch = "open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'"
    inside = run_python(scratch, "", FAST)
    assert inside.status == "pass"
    assert run_python("import subprocess\nsubprocess.run(['true'])", "", FAST).reason == "blocked"
    assert run_python("import os\nos.system('true')", "", FAST).reason == "blocked"
    assert run_python("import _posixsubprocess", "", FAST).reason == "blocked"
    fchdir = f"import os\nos.fchdir(os.open({str(tmp_path)!r}, os.O_RDONLY))\nopen('x', 'w')"
    assert run_python(fchdir, "", FAST).reason == "blocked" and not (tmp_path / "x").exists()
    assert run_python("import sys\nsys.exit(0)", "assert False", FAST).status == "fail"
    assert run_python("import os\nos._exit(0)", "assert False", FAST).status == "fail"
    env = run_python("import os, sys\nassert 'VIRTUAL_ENV' not in os.environ\n"
                     "assert not any('site-packages' in p for p in sys.path)\n"
                     "assert sys.stdin.read() == ''", "", FAST)
    assert env.status == "pass", env


def test_code_extraction_and_test_programs() -> None:
    text = ("```bash\npip install x\n```\n```python\ndef helper():\n    pass\n```\n"
            "```py\ndef add(a, b):\n    return a+b\n```")
    assert extract_code(text, "add") == "def add(a, b):\n    return a+b\n"
    assert extract_code("def add(a, b):\n    return a + b") is not None
    assert extract_code("Add them together.") is None
    program = build_test_program({"test": HUMANEVAL_TEST, "entry_point": "add"}) or ""
    assert program.rstrip().endswith("check(add)")
    assert build_test_program({"test_list": ["assert f(1) == 1"], "test_setup_code": "import math"}) == \
        "import math\n\nassert f(1) == 1\n"
    assert build_test_program({"answer": "4"}) is None


@pytest.mark.parametrize(("response", "letter"), [
    ("Answer: B", "B"),
    ("(B)", "B"),
    ("**B**", "B"),
    ("After weighing them, the answer is B.", "B"),
    ("The correct option is (B) Paris.", "B"),
    ("B. Paris", "B"),
    ("**Answer:** B", "B"),
    ("So the final answer is \\boxed{B}", "B"),
    ("I'd go with option B.", "B"),
    ("Option B is correct because the capital is Paris.", "B"),
    ("A good first step is elimination. The answer is (b).", "B"),
    ("Answer: C. Wait, no: the correct answer is B.", "B"),
    ("The answer is Paris.", "B"),
    ("Of the four, (B) fits.", "B"),
    ("A lot of people think so, but I am not sure.", None),
    ("(A) and (C) both look plausible.", None),
    ("The answer is a matter of taste.", None),
])
def test_multiple_choice_letter_extraction(response: str, letter: str | None) -> None:
    options = {"A": "London", "B": "Paris", "C": "Rome", "D": "Oslo"}
    assert chosen_letter(response, options) == letter


def test_multiple_choice_reference_and_verdicts() -> None:
    meta = {"options": ["A. London", "B. Paris", "C. Rome"], "answer": "Paris"}
    assert reference_letter(meta) == "B"
    assert reference_letter({"correct_option": "(c)"}) == "C"
    assert reference_letter({"answer_index": 3}) == "D"
    assert reference_letter({"answer": "B"}) is None  # a bare letter without options is not MC
    rule = ChoiceRule()
    q = "Capital of France? A. London B. Paris C. Rome"
    right = make_pair(q, "The answer is (B).", "Answer: A", **meta)
    flipped = make_pair(q, "Answer: C", "**B**", **meta)
    vague = make_pair(q, "The answer is B.", "It depends on the era.", **meta)
    verdicts = [rule.check(p).verdict for p in (right, flipped, vague)]
    assert verdicts == [Verdict.chosen, Verdict.rejected, None]
    assert "reference=B chosen_letter=B rejected_letter=A" in rule.check(right).detail


def test_rule_judge_runs_the_configured_rules_and_skips_decided_pairs(tmp_path: Path) -> None:
    code = add_pair(GOOD, BAD, test=HUMANEVAL_TEST, entry_point="add")
    choice = make_pair("Capital of France?", "Answer: B", "Answer: A", options=["London", "Paris"],
                       answer="B")
    math = make_pair("What is 2 + 2?", "The answer is 4.", "The answer is 5.", reference_answer="4")
    open_ended = make_pair("Write a poem.", "Roses are red.", "No.")
    ws, ids = workspace_with_pairs(tmp_path / "ws", [code, choice, math, open_ended])
    judges = build_judges([JudgeConfig(name="rules", kind="rule"),
                           JudgeConfig(name="math-only", kind="rule", model="math")])
    stats = judge_pairs(ws, judges, ids, round=1, seed=0)
    # Without the choice rule, the math rule still compares the MC pair's answer "B" as text.
    assert stats.per_judge == {"rules": 3, "math-only": 2}
    stored = pl.from_arrow(ws.read("judgments"))
    models = dict(stored.filter(pl.col("judge") == "rules").select("pair_id", "model").iter_rows())
    assert models == {code.pair_id: "unit-tests", choice.pair_id: "multiple-choice",
                      math.pair_id: "math-final-answer"}
    assert verifier_decided(ws) == {code.pair_id, choice.pair_id, math.pair_id}
    assert verifier_decided(ws, round=2) == set()
    assert parse_rules("") == ("code", "choice", "math")
    assert RuleJudge("r", rules=["math", "code"]).rule_names == ("code", "math")
    with pytest.raises(ValueError, match="unknown rule verifiers"):
        RuleJudge("r", "math,regex")


def test_verifier_decided_needs_verifiers_to_agree() -> None:
    rows = [("p1", "rules", "unit-tests", "chosen"), ("p2", "rules", "multiple-choice", "chosen"),
            ("p2", "other-rules", "math-final-answer", "rejected"), ("p3", "llm", "qwen", "chosen"),
            ("p4", "mine", "custom", "rejected")]
    frame = pl.DataFrame(rows, schema=["pair_id", "judge", "model", "verdict"], orient="row")
    frame = frame.with_columns(pl.lit(1).alias("round"))
    assert verifier_decided(frame) == {"p1"}
    assert verifier_decided(frame, judges=["mine"]) == {"p1", "p4"}
