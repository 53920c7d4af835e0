"""Bradley-Terry reward models: train on silver, select on gold, score the pool, evaluate.

Two kinds behind one interface (`RewardModel`): `embedding-head` (frozen sentence encoder and a
small head; the CPU default) and `sequence-classifier` (any HF backbone, trained with TRL,
scored by vLLM's pooling runner or transformers).
"""

from pipeline.rm.base import (
    Example,
    FitResult,
    RewardModel,
    bt_loss,
    mean_bt_loss,
    pairwise_accuracy,
    preference_probability,
)
from pipeline.rm.evaluate import EvalReport, evaluate, plot_report
from pipeline.rm.scoring import score_pairs
from pipeline.rm.training import TrainResult, build_rm, gold_accuracy, load_rm, oriented_examples, train_rm

__all__ = [
    "EvalReport",
    "Example",
    "FitResult",
    "RewardModel",
    "TrainResult",
    "bt_loss",
    "build_rm",
    "evaluate",
    "gold_accuracy",
    "load_rm",
    "mean_bt_loss",
    "oriented_examples",
    "pairwise_accuracy",
    "plot_report",
    "preference_probability",
    "score_pairs",
    "train_rm",
]
