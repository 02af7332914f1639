"""Box conversions and GIoU with the official epsilons."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops

from bifit.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    paired_generalized_box_iou,
)


def test_conversions_round_trip_and_known_values() -> None:
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.0, 0.0]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.1, 0.9, 0.1, 0.9]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    # leading dimensions are kept
    assert box_cxcywh_to_xyxy(torch.rand(2, 3, 5, 4)).shape == (2, 3, 5, 4)
    torch.testing.assert_close(box_area(xyxy), torch.tensor([0.08, 0.0]))


def test_iou_and_giou_known_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(union, torch.tensor([[7.0, 8.0]]))
    torch.testing.assert_close(iou, torch.tensor([[(1 + 1e-6) / (7 + 1e-6), 1e-6 / (8 + 1e-6)]]))
    giou = generalized_box_iou(a, b)
    # overlapping: enclosing 3x3 = 9; disjoint: enclosing 6x2 = 12
    expected = torch.tensor([[1 / 7 - 2 / 9, 0.0 - 4 / 12]])
    torch.testing.assert_close(giou, expected, atol=1e-6, rtol=0)


def test_empty_boxes_give_finite_values_not_nan() -> None:
    zero = torch.zeros(1, 4)
    assert box_iou(zero, zero)[0].item() == pytest.approx(1.0)
    # IoU 1 minus an "empty enclosing box" penalty of (0 + 1e-6) / (0 + 1e-6) = 1
    assert generalized_box_iou(zero, zero).item() == pytest.approx(0.0)
    assert paired_generalized_box_iou(zero, zero).item() == pytest.approx(0.0)
    # a real box against the zero box of an invalid frame: finite, below zero
    box = torch.tensor([[0.2, 0.2, 0.6, 0.8]])
    value = generalized_box_iou(box, zero).item()
    assert -1.0 <= value < 0.0


def test_pairwise_matches_torchvision_and_paired_matches_diagonal() -> None:
    gen = torch.Generator().manual_seed(0)
    # pixel-sized boxes, so that the 1e-6 epsilons (absent from torchvision) are negligible
    boxes1 = box_cxcywh_to_xyxy(torch.rand(6, 4, generator=gen) * 100)
    boxes2 = box_cxcywh_to_xyxy(torch.rand(6, 4, generator=gen) * 100)
    pairwise = generalized_box_iou(boxes1, boxes2)
    torch.testing.assert_close(pairwise, torchvision.ops.generalized_box_iou(boxes1, boxes2), atol=1e-6, rtol=0)
    torch.testing.assert_close(paired_generalized_box_iou(boxes1, boxes2), pairwise.diagonal())
    batched = paired_generalized_box_iou(boxes1.view(2, 3, 4), boxes2.view(2, 3, 4))
    torch.testing.assert_close(batched.flatten(), pairwise.diagonal())


def test_degenerate_or_mismatched_boxes_raise() -> None:
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    inverted = torch.tensor([[0.5, 0.0, 0.4, 1.0]])
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(inverted, good)
    with pytest.raises(ValueError, match="degenerate"):
        paired_generalized_box_iou(good, torch.full((1, 4), float("nan")))
    with pytest.raises(ValueError, match="equal shapes"):
        paired_generalized_box_iou(good, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="4 coordinates"):
        generalized_box_iou(torch.zeros(1, 3), good)
