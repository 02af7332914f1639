"""Focal loss, dice and the focal class cost: definitions and edge cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bifit.training.losses import dice_coefficient, dice_loss, focal_class_cost, sigmoid_focal_loss


def test_focal_matches_its_definition() -> None:
    x = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    p = torch.sigmoid(x)
    p_t = torch.where(y == 1, p, 1 - p)
    alpha_t = torch.where(y == 1, 0.25, 0.75)
    expected = -alpha_t * (1 - p_t) ** 2 * torch.log(p_t)
    torch.testing.assert_close(sigmoid_focal_loss(x, y), expected)


def test_focal_without_alpha_and_gamma_is_bce() -> None:
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    y = (torch.rand(4, 7, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha=-1, gamma=0), bce)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.5, 1.5), (-1, 0.0)])
def test_focal_is_the_official_formula_to_the_bit(alpha: float, gamma: float) -> None:
    # The official criterion's operations in its order (ReferFormer `segmentation.sigmoid_focal_loss`
    # before its reduction): the library function must give the same float32 bits, gradients too.
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(3, 5, 4096, generator=generator) * 10).requires_grad_(True)
    y = (torch.rand(3, 5, 4096, generator=generator) > 0.7).float()
    prob = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = prob * y + (1 - prob) * (1 - y)
    official = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        official = (alpha * y + (1 - alpha) * (1 - y)) * official
    ours = sigmoid_focal_loss(x, y, alpha, gamma)
    assert torch.equal(ours, official)
    assert torch.equal(torch.autograd.grad(ours.sum(), x)[0], torch.autograd.grad(official.sum(), x)[0])


def test_focal_saturated_logits_stay_finite_with_finite_gradients() -> None:
    x = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = sigmoid_focal_loss(x, y)
    assert loss[:2].abs().max() < 1e-30  # confident and right: no loss
    torch.testing.assert_close(loss[2:], torch.tensor([0.75 * 100.0, 0.25 * 100.0]))  # confident and wrong
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_dice_perfect_empty_and_wrong_predictions() -> None:
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    perfect = torch.tensor([[50.0, 50.0, -50.0, -50.0]])
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # the +1 smoothing makes an empty prediction of an empty target a perfect score, not NaN
    assert dice_loss(torch.full((1, 4), -50.0), torch.zeros(1, 4)).item() == pytest.approx(0.0, abs=1e-6)
    # everything predicted where nothing is: 1 - 1 / 5
    assert dice_loss(torch.full((1, 4), 50.0), torch.zeros(1, 4)).item() == pytest.approx(0.8, abs=1e-6)


def test_dice_reduces_the_last_dimension_and_broadcasts() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 12, generator=gen)
    targets = (torch.rand(2, 1, 12, generator=gen) > 0.5).float()
    coef = dice_coefficient(logits, targets)
    assert coef.shape == (2, 5)
    p = logits[1, 4].sigmoid()
    y = targets[1, 0]
    assert coef[1, 4].item() == pytest.approx(((2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)).item(), rel=1e-6)


def test_focal_class_cost_favours_high_scores_and_is_finite_at_the_ends() -> None:
    prob = torch.tensor([0.0, 0.01, 0.5, 0.99, 1.0])
    cost = focal_class_cost(prob)
    assert torch.isfinite(cost).all()
    assert (cost[1:] < cost[:-1]).all()  # strictly decreasing in the score
    log_half = torch.log(torch.tensor(0.5 + 1e-8)).item()
    assert cost[2].item() == pytest.approx(0.25 * 0.25 * -log_half - 0.75 * 0.25 * -log_half, rel=1e-6)
