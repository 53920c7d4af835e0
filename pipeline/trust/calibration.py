"""Calibrated probability that a stored label is wrong, fitted on evaluation gold.

Evidence features are antisymmetric under swapping chosen and rejected (an RM's logit(p), the
weighted vote score): swapping the pair negates them. Gold from a source's own labels is all
"chosen", so a plain Platt fit would have no negative class. Symmetric augmentation fixes that:
each gold pair contributes (x, right=1) in its gold orientation and (-x, right=0) flipped. The
model then has no intercept (a flip must exactly invert the odds) and x @ w is a log-likelihood
ratio (stored label right : wrong) at prior 0.5; the pool's noise rate supplies the prior.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from pipeline.trust.intervals import Estimate, wilson

_NEWTON_STEPS = 100
_NEWTON_TOL = 1e-10


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps], so a saturated RM stays finite."""
    q = np.clip(np.asarray(p, dtype=float), eps, 1.0 - eps)
    return np.log(q) - np.log1p(-q)


def _as_features(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"features must be 1-D or (n, d), got shape {arr.shape}")
    return arr


class SymmetricPlatt:
    """Logistic regression without intercept on symmetrically augmented gold (Newton / IRLS).

    With one feature the coefficient is the evidence's temperature: 1.0 means the RM's own
    probabilities are calibrated, near 0 means the evidence says nothing.
    """

    def __init__(self) -> None:
        self.coef: np.ndarray = np.zeros(0)
        self.n: int = 0
        self.l2: float = 0.0

    def fit(self, x: np.ndarray, l2: float = 1e-2) -> SymmetricPlatt:
        """Fit on gold features `x` (n, d) in the gold orientation; L2 keeps separable gold finite."""
        feats = _as_features(x)
        n, d = feats.shape
        if n == 0:
            raise ValueError("cannot calibrate on an empty gold set")
        z = np.vstack([feats, -feats])
        y = np.concatenate([np.ones(n), np.zeros(n)])
        w = np.zeros(d)
        for _ in range(_NEWTON_STEPS):
            p = expit(z @ w)
            grad = z.T @ (p - y) + l2 * w
            hess = (z * (p * (1.0 - p))[:, None]).T @ z + l2 * np.eye(d)
            step = np.linalg.solve(hess, grad)
            w = w - step
            if float(np.max(np.abs(step))) < _NEWTON_TOL:
                break
        self.coef, self.n, self.l2 = w, n, float(l2)
        return self

    def _check_fitted(self, feats: np.ndarray) -> None:
        if self.coef.size == 0:
            raise RuntimeError("SymmetricPlatt is not fitted")
        if feats.shape[1] != self.coef.size:
            raise ValueError(f"expected {self.coef.size} features, got {feats.shape[1]}")

    def log_lr(self, x: np.ndarray) -> np.ndarray:
        """Log-likelihood ratio (label right : wrong) for features in the label's orientation."""
        feats = _as_features(x)
        self._check_fitted(feats)
        return feats @ self.coef

    def prob_right(self, x: np.ndarray) -> np.ndarray:
        """P(label right | evidence) at prior 0.5."""
        return expit(self.log_lr(x))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for the round summary."""
        return {"coef": [float(c) for c in self.coef], "n": self.n, "l2": self.l2}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SymmetricPlatt:
        """Rebuild a fitted model from `to_dict` output."""
        model = cls()
        model.coef = np.asarray(data["coef"], dtype=float)
        model.n = int(data.get("n", 0))
        model.l2 = float(data.get("l2", 0.0))
        return model


def posterior_wrong(log_lr: np.ndarray, prior_wrong: float) -> np.ndarray:
    """P(stored label wrong | evidence) = sigmoid(-log_lr + logit(prior_wrong))."""
    prior = float(logit(np.asarray(prior_wrong)))
    return expit(-np.asarray(log_lr, dtype=float) + prior)


def flag_rates(
    model: SymmetricPlatt, x_gold: np.ndarray, prior_wrong: float, threshold: float
) -> tuple[Estimate, Estimate]:
    """(TPR, FPR) of "flag when posterior_wrong > threshold" on augmented gold, Wilson CIs.

    Gold in its own orientation stands for right labels, flipped copies for wrong ones. Pass
    gold the model was not fitted on for a strictly out-of-sample rate; with one or two
    coefficients the in-sample optimism is small.
    """
    llr = model.log_lr(x_gold)
    n = int(llr.size)
    flagged_wrong = int(np.sum(posterior_wrong(-llr, prior_wrong) > threshold))
    flagged_right = int(np.sum(posterior_wrong(llr, prior_wrong) > threshold))
    return wilson(flagged_wrong, n), wilson(flagged_right, n)


def _precision(prior: float, tpr: float, fpr: float) -> float | None:
    flagged = prior * tpr + (1.0 - prior) * fpr
    return None if flagged <= 0.0 else prior * tpr / flagged


def expected_precision(prior_wrong: float, tpr: Estimate, fpr: Estimate) -> Estimate:
    """Share of flagged pool labels that are really wrong: pi*TPR / (pi*TPR + (1-pi)*FPR).

    The interval combines the worst (tpr.low, fpr.high) and best (tpr.high, fpr.low) bounds,
    a conservative box rather than an exact interval. n is the number of gold pairs behind the
    rates. Value None when the rule flags nothing on gold.
    """
    n = tpr.n
    t, t_low, t_high = tpr.value, tpr.low, tpr.high
    f, f_low, f_high = fpr.value, fpr.low, fpr.high
    if t is None or t_low is None or t_high is None or f is None or f_low is None or f_high is None:
        return Estimate(None, None, None, n)
    value = _precision(prior_wrong, t, f)
    if value is None:
        return Estimate(None, None, None, n)
    low = _precision(prior_wrong, t_low, f_high)
    high = _precision(prior_wrong, t_high, f_low)
    return Estimate(value, 0.0 if low is None else low, 1.0 if high is None else high, n)
