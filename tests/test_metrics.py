"""Metrics against hand-computed values: AUC with ties, pointing game, mass, Spearman, insertion / deletion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from spade.errors import ConfigError
from spade.metrics import (
    curve_auc,
    insertion_deletion,
    mass_in_mask,
    pointing_game,
    rank_correlation,
    trojan_auc,
)


def test_auc_with_ties_matches_pair_counting():
    # positives 2, 3, 2 vs negatives 1, 2, 1: wins 2 + 3 + 2, ties 2 x 0.5 -> 8 / 9
    scores = torch.tensor([[1.0, 2.0, 2.0], [3.0, 1.0, 2.0]])
    mask = torch.tensor([[False, True, False], [True, False, True]])
    result = trojan_auc(scores, mask)
    assert result.signed == pytest.approx(8 / 9)
    assert result.absolute == pytest.approx(8 / 9)


def test_auc_signed_and_absolute_differ_and_best_is_reported():
    scores = np.array([[-3.0, 2.0, 0.0], [1.0, -1.0, 0.0]])
    mask = np.array([[True, False, False], [True, False, False]])
    result = trojan_auc(scores, mask)
    # signed: -3 beats nothing; 1 beats 0, -1, 0 -> 3 / 8
    assert result.signed == pytest.approx(3 / 8)
    # absolute: 3 beats all four; 1 beats 0, 0 and ties 1 -> 6.5 / 8
    assert result.absolute == pytest.approx(6.5 / 8)
    assert result.best == pytest.approx(6.5 / 8)


def test_auc_of_constant_map_is_one_half_and_bad_masks_are_refused():
    assert trojan_auc(np.ones((4, 4)), np.eye(4, dtype=bool)).signed == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        trojan_auc(np.ones((4, 4)), np.ones((4, 4), dtype=bool))
    with pytest.raises(ConfigError):
        trojan_auc(np.ones((4, 4)), np.eye(3, dtype=bool))
    with pytest.raises(ConfigError):
        trojan_auc(np.full((2, 2), np.nan), np.eye(2, dtype=bool))


def test_pointing_game():
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = True
    assert pointing_game(np.array([[5, 1, 1], [1, 1, 1], [1, 1, 1]]), mask)
    assert not pointing_game(np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]), mask)
    assert not pointing_game(np.ones((3, 3)), mask)  # a tie that leaves the mask is a miss
    mask[0, 1] = True
    assert pointing_game(np.array([[5, 5, 1], [1, 1, 1], [1, 1, 1]]), mask)


def test_mass_in_mask():
    scores = np.array([[2.0, -1.0], [0.5, 0.5]])
    mask = np.array([[True, False], [False, True]])
    assert mass_in_mask(scores, mask) == pytest.approx(2.5 / 4.0)
    assert math.isnan(mass_in_mask(np.zeros((2, 2)), mask))


def test_rank_correlation():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    # ranks 1 2 3 4 vs 1 3 2 4: rho = 1 - 6 * 2 / (4 * 15)
    assert rank_correlation(a, np.array([[1.0, 3.0], [2.0, 4.0]])) == pytest.approx(0.8)
    assert math.isnan(rank_correlation(a, np.ones((2, 2))))


def test_curve_auc_is_a_normalized_trapezoid():
    assert curve_auc(np.ones(100)) == pytest.approx(1.0)
    assert curve_auc(np.linspace(0, 1, 100)) == pytest.approx(0.5)
    assert curve_auc([0.0, 1.0, 0.0]) == pytest.approx(0.5)


PIXEL_WEIGHTS = [2.0, -1.0, 0.5, 1.0]  # logit of class 0 = sum over pixels of weight * (sum of channels)


def pixel_model() -> nn.Module:
    lin = nn.Linear(12, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        for c in range(3):
            for p, w in enumerate(PIXEL_WEIGHTS):
                lin.weight[0, c * 4 + p] = w
    return nn.Sequential(nn.Flatten(), lin).eval()


def test_insertion_deletion_hand_computed():
    model, x = pixel_model(), torch.ones(3, 2, 2)
    saliency = torch.tensor([[0.9, 0.1], [0.5, 0.7]])  # order: pixel 0, 3, 2, 1

    def prob(z):  # softmax of (z, 0) for class 0
        return 1 / (1 + math.exp(-z))

    full = prob(3 * sum(PIXEL_WEIGHTS))  # 7.5
    insert_z = [0.0, 6.0, 9.0, 10.5]  # keep 0, 1, 2, 3 most salient pixels
    delete_z = [7.5, 1.5, -1.5, -3.0]  # remove them
    ins = [min(1.0, prob(z) / full) for z in insert_z]
    dele = [min(1.0, prob(z) / full) for z in delete_z]

    def trap(v):
        return (v[0] / 2 + v[1] + v[2] + v[3] / 2) / 3

    result = insertion_deletion(model, x, saliency, target=0, steps=4, batch_size=3)
    assert result.insertion == pytest.approx(ins)
    assert result.deletion == pytest.approx(dele)
    assert result.insertion_auc == pytest.approx(trap(ins))
    assert result.deletion_auc == pytest.approx(trap(dele))
    assert result.fractions == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert set(result.curves) == {"fraction", "insertion", "deletion"}


def test_insertion_deletion_is_batched_and_reports_progress():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x, sal = torch.randn(3, 8, 8), torch.randn(8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    a = insertion_deletion(model, x, sal, 1, steps=10, batch_size=1, progress=lambda s, f: seen.append(f))
    b = insertion_deletion(model, x[None], sal.numpy(), 1, steps=10, batch_size=64)
    assert a.insertion == pytest.approx(b.insertion) and a.deletion == pytest.approx(b.deletion)
    assert len(seen) == 21 and seen[-1] == 1.0
    assert a.deletion[0] == pytest.approx(1.0)  # nothing removed yet
    assert all(0.0 <= v <= 1.0 for v in np.concatenate([a.insertion, a.deletion]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_insertion_deletion_refuses_bad_input():
    model = pixel_model()
    with pytest.raises(ConfigError):
        insertion_deletion(model, torch.ones(3, 2, 2), torch.ones(3, 3), 0)
    with pytest.raises(ConfigError):
        insertion_deletion(model, torch.ones(3, 2, 2), torch.ones(2, 2), 5)
    with pytest.raises(ConfigError):
        insertion_deletion(model, torch.ones(3, 2, 2), torch.ones(2, 2), 0, batch_size=0)


def test_insertion_deletion_never_runs_a_training_mode_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    x, sal = torch.randn(3, 8, 8), torch.randn(8, 8)
    expected = insertion_deletion(model.eval(), x, sal, 0, steps=5)
    stats = model[1].running_mean.clone()
    got = insertion_deletion(model.train(), x, sal, 0, steps=5)
    assert model.training and torch.equal(model[1].running_mean, stats)  # BN statistics untouched
    assert got.insertion == pytest.approx(expected.insertion, rel=1e-5)
