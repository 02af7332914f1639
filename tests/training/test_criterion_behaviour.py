"""Criterion and matcher behaviour beyond the official fixture: targets, normaliser, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bifit.training import CriterionConfig, VideoHungarianMatcher, build_criterion, collate_targets, num_valid_frames


def _target(t: int, h: int, w: int, valid: list[int], seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "labels": torch.zeros(t, dtype=torch.int64),
        "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4] if v else [0.0] * 4 for v in valid]),
        "masks": torch.rand(t, h, w, generator=gen) > 0.6,
        "valid": torch.tensor(valid),
        "size": torch.tensor([h, w]),
        "caption": "the dog on the left",
    }


def _outputs(b: int, t: int, q: int, hw: tuple[int, int], aux: int = 0, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def layer() -> dict:
        return {
            "pred_logits": torch.randn(b, t, q, 1, generator=gen),
            "pred_boxes": torch.rand(b, t, q, 4, generator=gen),
            "pred_masks": torch.randn(b, t, q, *hw, generator=gen),
        }

    out = layer()
    if aux:
        out["aux_outputs"] = [layer() for _ in range(aux)]
    return out


def test_collate_pads_to_a_multiple_of_32_then_samples_every_4th_pixel_from_2() -> None:
    targets = [_target(2, 37, 50, [1, 1], seed=1), _target(2, 20, 64, [1, 0], seed=2)]
    stacked = collate_targets(targets, num_frames=2, mask_size=(16, 16))
    canvas = torch.zeros(2, 2, 64, 64)
    for i, target in enumerate(targets):
        h, w = target["masks"].shape[-2:]
        canvas[i, :, :h, :w] = target["masks"].float()
    torch.testing.assert_close(stacked.masks, canvas[:, :, 2::4, 2::4])
    assert stacked.valid.dtype == torch.bool and stacked.valid.tolist() == [[True, True], [True, False]]
    assert stacked.boxes.shape == (2, 2, 4) and stacked.labels.dtype == torch.int64


def test_released_configuration_and_aux_weights_follow_the_outputs() -> None:
    config = CriterionConfig()
    assert config.focal_alpha == 0.25 and config.mask_out_stride == 4
    released = build_criterion()
    assert released.num_classes == 1 and released.size_divisibility == 32
    weights = config.weight_dict(3)
    assert weights["loss_ce_2"] == 2 and weights["loss_bbox"] == 5 and weights["loss_giou_1"] == 2
    assert weights["loss_mask_0"] == 2 and weights["loss_dice"] == 5 and len(weights) == 20

    criterion = build_criterion()
    losses = criterion(_outputs(1, 2, 3, (8, 8), aux=1), [_target(2, 30, 30, [1, 1])])
    names = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")
    assert list(losses) == [*names, *(f"{n}_0" for n in names), "loss"]
    expected = sum(config.weight_dict(1)[k] * v for k, v in losses.items() if k != "loss")
    torch.testing.assert_close(losses["loss"], expected)


def test_loss_terms_by_hand_for_one_sample() -> None:
    out = _outputs(1, 2, 3, (8, 8), seed=5)
    target = _target(2, 32, 32, [1, 0], seed=6)
    criterion = build_criterion()
    q = criterion.matcher(out, [target]).item()
    losses = criterion(out, [target])
    # N = 1 valid frame
    logits = out["pred_logits"][0, :, :, 0]
    cls_target = torch.zeros_like(logits)
    cls_target[0, q] = 1.0  # the invalid frame gets no positive
    p = logits.sigmoid()
    p_t = p * cls_target + (1 - p) * (1 - cls_target)
    alpha_t = 0.25 * cls_target + 0.75 * (1 - cls_target)
    focal = alpha_t * F.binary_cross_entropy_with_logits(logits, cls_target, reduction="none") * (1 - p_t) ** 2
    torch.testing.assert_close(losses["loss_ce"], focal.sum())
    torch.testing.assert_close(losses["loss_bbox"], (out["pred_boxes"][0, :, q] - target["boxes"]).abs().sum())
    m = out["pred_masks"][0, :, q].flatten().sigmoid()
    y = target["masks"][:, 2::4, 2::4].flatten().float()
    torch.testing.assert_close(losses["loss_dice"], 1 - (2 * (m * y).sum() + 1) / (m.sum() + y.sum() + 1))


def test_normaliser_counts_valid_frames_and_is_at_least_one() -> None:
    assert num_valid_frames(torch.tensor([[1, 0, 1], [1, 1, 0]])) == 4.0
    assert num_valid_frames(torch.zeros(2, 3, dtype=torch.bool)) == 1.0


def test_batch_without_valid_frames_is_finite_and_has_no_positive_class() -> None:
    # The official matcher cannot average a class cost over zero valid frames; ours skips it.
    out = _outputs(2, 2, 3, (8, 8), seed=7)
    targets = [_target(2, 32, 32, [0, 0], seed=8), _target(2, 32, 32, [0, 0], seed=9)]
    for t in targets:
        t["masks"][:] = False
    losses = build_criterion()(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    negatives = 0.75 * out["pred_logits"].sigmoid() ** 2 * F.softplus(out["pred_logits"])
    torch.testing.assert_close(losses["loss_ce"], negatives.sum())


def test_matcher_prefers_the_query_that_fits_the_clip() -> None:
    target = _target(3, 32, 32, [1, 1, 1], seed=10)
    out = _outputs(1, 3, 4, (8, 8), seed=11)
    good = target["masks"][:, 2::4, 2::4].float() * 20 - 10
    out["pred_masks"][0, :, 2] = good
    out["pred_boxes"][0, :, 2] = target["boxes"]
    out["pred_logits"][0, :, 2] = 5.0
    assert VideoHungarianMatcher()(out, [target]).tolist() == [2]


def test_clear_errors_for_inconsistent_inputs() -> None:
    criterion = build_criterion()
    out = _outputs(1, 2, 3, (8, 8))
    with pytest.raises(ValueError, match="T=1"):
        criterion(out, [_target(1, 32, 32, [1])])  # A2D targets with a multi-frame output
    with pytest.raises(ValueError, match="multiple of 32"):
        criterion(out, [_target(2, 40, 32, [1, 1])])  # pads to 64x32, grid 16x8
    with pytest.raises(ValueError, match="lacks the keys"):
        criterion(out, [{k: v for k, v in _target(2, 32, 32, [1, 1]).items() if k != "valid"}])
    with pytest.raises(ValueError, match="2 target dicts"):
        criterion(out, [_target(2, 32, 32, [1, 1])] * 2)
    with pytest.raises(ValueError, match="expects 3"):
        build_criterion(num_classes=3)(out, [_target(2, 32, 32, [1, 1])])
    bad_aux = {**out, "aux_outputs": [{k: v[..., :4, :4] if k == "pred_masks" else v for k, v in out.items()}]}
    with pytest.raises(ValueError, match="aux_outputs\\[0\\]"):
        criterion(bad_aux, [_target(2, 32, 32, [1, 1])])
    with pytest.raises(ValueError, match="multiple of mask_out_stride"):
        build_criterion(size_divisibility=30)
