"""The coefficients of the BIFIT criterion, free of torch so that training configurations (and the
`bifit` command's argument parsing) load without it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..config import ConfigFields

__all__ = ["CriterionConfig", "LOSS_NAMES"]

LOSS_NAMES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


@dataclass(frozen=True)
class CriterionConfig(ConfigFields):
    """Coefficients of the matching costs and losses; defaults are the released configuration.

    `focal_alpha` weighs the classification loss (official `--focal_alpha`); the mask focal loss
    and the matcher's focal costs use their own alphas, fixed at 0.25 in the official code. The
    facts the criterion shares with the model and the data (number of classes, padding multiple)
    are not settings of their own: `build_criterion` takes them from their owners.
    """

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cost_mask: float = 2.0
    cost_dice: float = 5.0
    cls_loss_coef: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    mask_loss_coef: float = 2.0
    dice_loss_coef: float = 5.0
    focal_alpha: float = 0.25
    mask_focal_alpha: float = 0.25
    matcher_focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    mask_out_stride: int = 4

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{f.name} must be a finite number, got {value!r}")
        if not problems:
            for name in ("cost_class", "cost_bbox", "cost_giou", "cost_mask", "cost_dice", "cls_loss_coef",
                         "bbox_loss_coef", "giou_loss_coef", "mask_loss_coef", "dice_loss_coef", "focal_gamma"):
                if getattr(self, name) < 0:
                    problems.append(f"{name} must be non-negative, got {getattr(self, name)}")
            for name in ("focal_alpha", "mask_focal_alpha", "matcher_focal_alpha"):
                if not 0.0 <= getattr(self, name) <= 1.0:
                    problems.append(f"{name} must lie in [0, 1], got {getattr(self, name)}")
            if all(getattr(self, name) == 0 for name in ("cost_class", "cost_bbox", "cost_giou", "cost_mask", "cost_dice")):
                problems.append("at least one matching cost (cost_class ... cost_dice) must be non-zero")
            if self.mask_out_stride < 1 or isinstance(self.mask_out_stride, float):
                problems.append(f"mask_out_stride must be a positive integer, got {self.mask_out_stride}")
        if problems:
            raise ValueError("invalid CriterionConfig: " + "; ".join(problems))

    def weight_dict(self, num_aux_layers: int = 0) -> dict[str, float]:
        """Weight of every loss term: the five final ones, then `_0` … `_{n-1}` for the aux layers."""
        coefficients = (
            self.cls_loss_coef,
            self.bbox_loss_coef,
            self.giou_loss_coef,
            self.mask_loss_coef,
            self.dice_loss_coef,
        )
        base = dict(zip(LOSS_NAMES, coefficients))
        weights = dict(base)
        for layer in range(num_aux_layers):
            weights.update({f"{name}_{layer}": value for name, value in base.items()})
        return weights
