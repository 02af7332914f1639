"""Box format conversions and (generalised) IoU with the official epsilons.

Boxes are `[..., 4]` tensors, either `cxcywh` (centre, width, height) or `xyxy` (corners). The
IoU functions add 1e-6 to numerator and denominator as the official code does, so two empty
boxes (the zero box of a frame without the object) give IoU 1 and GIoU 0 instead of NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xyxy_to_cxcywh",
    "generalized_box_iou",
    "paired_generalized_box_iou",
]

_EPS = 1e-6


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """`[..., 4]` (cx, cy, w, h) -> `[..., 4]` (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """`[..., 4]` (x1, y1, x2, y2) -> `[..., 4]` (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas `[...]` of `[..., 4]` xyxy boxes."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _check_xyxy(boxes: Tensor, name: str) -> None:
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have 4 coordinates in the last dimension, got shape {tuple(boxes.shape)}")
    # Degenerate (or NaN) boxes would give a meaningless GIoU; the official code asserts the same.
    if not bool((boxes[..., 2:] >= boxes[..., :2]).all()):
        raise ValueError(f"{name} has degenerate boxes (x2 < x1 or y2 < y1, or NaN coordinates)")


def _iou_terms(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of broadcast-compatible xyxy boxes."""
    top_left = torch.max(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return (inter + _EPS) / (union + _EPS), union


def _giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    iou, union = _iou_terms(boxes1, boxes2)
    top_left = torch.min(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union + _EPS) / (enclosing + _EPS)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of xyxy boxes `[N, 4]` and `[M, 4]`, both `[N, M]`.

    IoU = (intersection + 1e-6) / (union + 1e-6).
    """
    return _iou_terms(boxes1[:, None, :], boxes2[None, :, :])


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU `[N, M]` of xyxy boxes `[N, 4]` and `[M, 4]`.

    GIoU = IoU - (enclosing - union + 1e-6) / (enclosing + 1e-6). Raises `ValueError` on
    degenerate boxes.
    """
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    return _giou(boxes1[:, None, :], boxes2[None, :, :])


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU of corresponding xyxy boxes: `[..., 4]` and `[..., 4]` -> `[...]`.

    Equals the diagonal of `generalized_box_iou` without building the `[N, N]` matrix.
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"paired boxes need equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    return _giou(boxes1, boxes2)
