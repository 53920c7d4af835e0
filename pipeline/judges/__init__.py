"""Judges: LLMs (vLLM offline, OpenAI-compatible servers), reward models and rule verifiers.

Each judge sees pairs as Candidate 1 / Candidate 2 under the annotation protocol; every raw
judgment lands in the workspace's `judgments` table; `aggregate_votes` turns them into one
verdict per pair (self-consistency within a judge, then a weighted vote across judges).
"""

from pipeline.judges.aggregate import aggregate_votes, judge_agreement, judge_verdicts, position_consistency
from pipeline.judges.base import Judge, JudgeError, LabeledExample
from pipeline.judges.run import JudgeStats, build_judges, judge_pairs, labeled_examples, load_pairs

__all__ = [
    "Judge",
    "JudgeError",
    "JudgeStats",
    "LabeledExample",
    "aggregate_votes",
    "build_judges",
    "judge_agreement",
    "judge_pairs",
    "judge_verdicts",
    "labeled_examples",
    "load_pairs",
    "position_consistency",
]
