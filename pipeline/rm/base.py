"""What every reward model shares: the example it reads, the Bradley-Terry loss, the interface.

A reward model maps (conversation, response) to a scalar r. Trained with the Bradley-Terry
loss -log sigmoid(r_chosen - r_rejected), it gives p = sigmoid(r_chosen - r_rejected), the
probability that the stored chosen response is the better one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from schemas.config.rm import RMConfig
from schemas.pair import Message, PairRecord

if TYPE_CHECKING:
    import torch


class PairLike(Protocol):
    """Anything with a conversation and two final responses (PairRecord, Example)."""

    @property
    def conversation(self) -> Sequence[Message]: ...
    @property
    def chosen(self) -> str: ...
    @property
    def rejected(self) -> str: ...


@dataclass(frozen=True)
class Example:
    """One training or evaluation pair, already oriented: `chosen` is the better response."""

    conversation: tuple[Message, ...]
    chosen: str
    rejected: str
    pair_id: str = ""
    source: str = ""

    @classmethod
    def from_record(cls, record: PairRecord, *, flipped: bool = False) -> Example:
        chosen, rejected = (record.rejected, record.chosen) if flipped else (record.chosen, record.rejected)
        return cls(record.conversation, chosen, rejected, record.pair_id, record.source)


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean Bradley-Terry loss: -log sigmoid(r_chosen - r_rejected)."""
    import torch.nn.functional as F

    return -F.logsigmoid(r_chosen - r_rejected).mean()


def preference_probability(scores: np.ndarray) -> np.ndarray:
    """p = sigmoid(r_chosen - r_rejected) per row of an (n, 2) score array, computed stably."""
    margin = scores[:, 0].astype(np.float64) - scores[:, 1].astype(np.float64)
    small = np.exp(-np.abs(margin))  # never overflows
    return np.where(margin >= 0, 1 / (1 + small), small / (1 + small))


def pairwise_accuracy(scores: np.ndarray) -> float:
    """Share of rows with r_chosen > r_rejected; an exact tie counts as half right."""
    if len(scores) == 0:
        return float("nan")
    diff = scores[:, 0] - scores[:, 1]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def mean_bt_loss(scores: np.ndarray) -> float:
    """The Bradley-Terry loss of an (n, 2) score array (numpy; for selection and reports)."""
    if len(scores) == 0:
        return float("nan")
    margin = scores[:, 0].astype(np.float64) - scores[:, 1].astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, -margin)))


@dataclass
class Checkpoint:
    """One candidate checkpoint and how it did on gold."""

    epoch: float
    step: int
    train_loss: float
    gold_accuracy: float | None = None
    gold_loss: float | None = None

    def better_than(self, other: Checkpoint | None) -> bool:
        """Higher gold accuracy wins; equal accuracy goes to the lower gold loss."""
        if other is None:
            return True
        if self.gold_accuracy is None or other.gold_accuracy is None:
            return True  # without gold, the latest checkpoint is kept
        if not math.isclose(self.gold_accuracy, other.gold_accuracy, abs_tol=1e-12):
            return self.gold_accuracy > other.gold_accuracy
        return (self.gold_loss or 0.0) < (other.gold_loss or 0.0)


@dataclass
class FitResult:
    """What a model's training produced: every evaluated checkpoint and the one kept."""

    checkpoints: list[Checkpoint] = field(default_factory=list)
    best: Checkpoint | None = None
    train_pairs: int = 0
    seconds: float = 0.0
    truncation: dict[str, int] = field(default_factory=dict)

    @property
    def pairs_per_second(self) -> float:
        epochs = self.checkpoints[-1].epoch if self.checkpoints else 1.0
        return self.train_pairs * max(epochs, 1e-9) / self.seconds if self.seconds else float("nan")


ProgressFn = Callable[[int, int], None]
"""Progress callback: (done, total)."""


class RewardModel(ABC):
    """A Bradley-Terry reward model: fit on oriented pairs, score any pair, save and load."""

    kind: str = ""

    def __init__(self, cfg: RMConfig) -> None:
        self.cfg = cfg
        self.name = ""

    @abstractmethod
    def fit(self, train: Sequence[PairLike], gold: Sequence[PairLike] | None = None) -> FitResult:
        """Train on pairs whose `chosen` is the better response; keep the best checkpoint on gold."""

    @abstractmethod
    def score(self, records: Sequence[PairLike], *, progress: ProgressFn | None = None) -> np.ndarray:
        """Rewards as an (n, 2) float array: column 0 for `chosen`, column 1 for `rejected`."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write everything `load` needs into a local folder."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, cfg: RMConfig) -> RewardModel:
        """Rebuild a saved model."""

    def describe(self) -> dict[str, Any]:
        """Facts a report prints next to the model's figures."""
        return {"kind": self.kind, "base_model": self.cfg.base_model, "name": self.name}

    def close(self) -> None:
        """Release engines held for scoring (a vLLM engine holds memory until closed)."""
        return None
