"""Loss and matching-cost primitives of BIFIT (sigmoid focal loss and dice on logits).

All functions take raw logits; targets are float tensors of 0/1 of the same shape. The focal loss is
torchvision's `sigmoid_focal_loss` (element-wise by default, `alpha=-1` turns the alpha weighting
off): the official formula to the bit, in values and gradients.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

__all__ = ["dice_coefficient", "dice_loss", "focal_class_cost", "sigmoid_focal_loss"]


def dice_coefficient(logits: Tensor, targets: Tensor) -> Tensor:
    """Smoothed dice coefficient over the last dimension: `[..., D]`, `[..., D]` -> `[...]`.

    (2 * sum(sigmoid(x) y) + 1) / (sum(sigmoid(x)) + sum(y) + 1); the leading dimensions
    broadcast, so `[B, Q, D]` predictions can meet `[B, 1, D]` targets.
    """
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (numerator + 1) / (denominator + 1)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - `dice_coefficient`: `[..., D]`, `[..., D]` -> `[...]`."""
    return 1 - dice_coefficient(logits, targets)


def focal_class_cost(prob: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Matching cost of calling each score positive, same shape as `prob` (probabilities).

    Focal cost of the positive label minus that of the negative one:
    alpha (1 - p)^gamma (-log(p + 1e-8)) - (1 - alpha) p^gamma (-log(1 - p + 1e-8)).
    """
    positive = alpha * ((1 - prob) ** gamma) * (-(prob + 1e-8).log())
    negative = (1 - alpha) * (prob**gamma) * (-(1 - prob + 1e-8).log())
    return positive - negative
