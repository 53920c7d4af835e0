"""The Bradley-Terry loss, its gradient, and the numbers derived from scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.rm import bt_loss, mean_bt_loss, pairwise_accuracy, preference_probability
from pipeline.rm.base import Checkpoint


def test_bt_loss_of_one_pair_is_log_one_plus_exp_minus_margin() -> None:
    rc = torch.tensor([1.0], requires_grad=True)
    rr = torch.tensor([0.0], requires_grad=True)
    loss = bt_loss(rc, rr)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-6)  # 0.313262
    loss.backward()
    # d/d rc of -log sigmoid(rc - rr) = -(1 - sigmoid(1)) = -sigmoid(-1) = -0.268941
    assert rc.grad.item() == pytest.approx(-0.2689414, abs=1e-6)
    assert rr.grad.item() == pytest.approx(0.2689414, abs=1e-6)


def test_bt_loss_averages_the_batch_and_its_gradient_is_split() -> None:
    rc = torch.tensor([0.0, 2.0], requires_grad=True)
    rr = torch.tensor([0.0, -1.0], requires_grad=True)
    loss = bt_loss(rc, rr)
    # margins 0 and 3: (log 2 + log(1 + e^-3)) / 2
    assert loss.item() == pytest.approx((math.log(2) + math.log(1 + math.exp(-3))) / 2, abs=1e-6)
    loss.backward()
    assert rc.grad.tolist() == pytest.approx([-0.5 / 2, -(1 / (1 + math.exp(3))) / 2], abs=1e-6)
    assert (rc.grad + rr.grad).abs().max().item() == pytest.approx(0.0, abs=1e-7)


def test_wrong_order_costs_more_than_right_order() -> None:
    right = bt_loss(torch.tensor([2.0]), torch.tensor([0.0])).item()
    wrong = bt_loss(torch.tensor([0.0]), torch.tensor([2.0])).item()
    assert wrong - right == pytest.approx(2.0, abs=1e-6)  # log-odds difference equals the margin


def test_numpy_loss_matches_torch_and_stays_finite_for_large_margins() -> None:
    scores = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, -3.5], [0.0, 800.0]])
    expected = bt_loss(torch.tensor(scores[:, 0]), torch.tensor(scores[:, 1])).item()
    assert mean_bt_loss(scores) == pytest.approx(expected, rel=1e-9)
    assert np.isfinite(preference_probability(np.array([[800.0, 0.0], [0.0, 800.0]]))).all()


def test_probability_and_accuracy_follow_the_margin() -> None:
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [3.0, 1.0]])
    p = preference_probability(scores)
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1)), 0.5,
                                        1 / (1 + math.exp(-2))])
    assert pairwise_accuracy(scores) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_checkpoint_selection_prefers_accuracy_then_lower_loss() -> None:
    a = Checkpoint(epoch=1, step=10, train_loss=0.6, gold_accuracy=0.70, gold_loss=0.60)
    b = Checkpoint(epoch=2, step=20, train_loss=0.5, gold_accuracy=0.75, gold_loss=0.65)
    c = Checkpoint(epoch=3, step=30, train_loss=0.4, gold_accuracy=0.75, gold_loss=0.55)
    assert b.better_than(a) and not a.better_than(b)
    assert c.better_than(b) and not b.better_than(c)
    assert a.better_than(None)
