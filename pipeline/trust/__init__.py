"""Trust: every quality figure out-of-sample with a CI, every label change gated on reliability.

Pure statistics over numpy arrays and Polars tables; the flows decide what to do with them.
"""

from pipeline.trust.calibration import (
    SymmetricPlatt,
    expected_precision,
    flag_rates,
    logit,
    posterior_wrong,
)
from pipeline.trust.gold_split import EVAL, TRAIN, assign_gold_parts, stratum_key
from pipeline.trust.intervals import Estimate, wilson
from pipeline.trust.noise import (
    estimate_noise_rate,
    log_lr_counts,
    merge_counts,
    noise_by_source,
    noise_by_source_counts,
)
from pipeline.trust.reliability import (
    Reliability,
    is_reliable,
    judge_reliability,
    judge_votes,
    rm_reliability,
    vote_weight,
    weighted_vote_score,
)

__all__ = [
    "EVAL",
    "TRAIN",
    "Estimate",
    "Reliability",
    "SymmetricPlatt",
    "assign_gold_parts",
    "estimate_noise_rate",
    "expected_precision",
    "flag_rates",
    "is_reliable",
    "judge_reliability",
    "judge_votes",
    "log_lr_counts",
    "logit",
    "merge_counts",
    "noise_by_source",
    "noise_by_source_counts",
    "posterior_wrong",
    "rm_reliability",
    "stratum_key",
    "vote_weight",
    "weighted_vote_score",
    "wilson",
]
