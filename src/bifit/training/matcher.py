"""Video-level matching of BIFIT: one referred object per clip, one query shared by all frames.

Each video has exactly one target (the referred object), so the "Hungarian" matching reduces to
picking, per sample, the query whose clip-level cost is smallest (the first such query on ties).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from bifit.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from bifit.training.criterion_config import CriterionConfig
from bifit.training.losses import dice_coefficient, focal_class_cost, sigmoid_focal_loss

__all__ = ["VideoHungarianMatcher", "VideoTargets", "check_layer_outputs", "collate_targets"]

_REQUIRED_TARGET_KEYS = ("labels", "boxes", "masks", "valid")


@dataclass(frozen=True)
class VideoTargets:
    """The targets of a batch stacked on the predictions' device.

    Attributes:
        labels: `[B, T]` int64 class of the referred object per frame.
        boxes: `[B, T, 4]` normalised cxcywh boxes (zero in invalid frames).
        valid: `[B, T]` bool, whether the object is visible (with a non-degenerate box) per frame.
        masks: `[B, T, h, w]` ground-truth masks in the predictions' dtype: each sample's masks
            zero-padded to the batch's largest size rounded up to `size_divisibility`, then every
            `stride`-th pixel from offset `stride // 2`, i.e. on the grid of `pred_masks`.
    """

    labels: Tensor
    boxes: Tensor
    valid: Tensor
    masks: Tensor


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def collate_targets(
    targets: Sequence[Mapping[str, Any]],
    num_frames: int,
    mask_size: tuple[int, int],
    *,
    stride: int = 4,
    size_divisibility: int = 32,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> VideoTargets:
    """Stack per-sample target dicts (official dataset format) into a `VideoTargets`.

    Args:
        targets: B dicts with `labels [T]`, `boxes [T, 4]` (normalised cxcywh), `masks [T, H, W]`
            at the sample's own input size and `valid [T]`; other keys are ignored.
        num_frames: T of the predictions (1 for A2D/JHMDB, whose targets hold one annotated frame).
        mask_size: `(h, w)` of `pred_masks`; must equal the padded target size divided by `stride`.
    """
    if len(targets) == 0:
        raise ValueError("targets is empty: the criterion needs one target dict per sample")
    for index, target in enumerate(targets):
        missing = [key for key in _REQUIRED_TARGET_KEYS if key not in target]
        if missing:
            raise ValueError(f"target {index} lacks the keys {missing} (needs {list(_REQUIRED_TARGET_KEYS)})")
        masks = target["masks"]
        if masks.dim() != 3:
            raise ValueError(f"target {index}: masks must be [T, H, W], got shape {tuple(masks.shape)}")
        shapes = {
            "labels": (tuple(target["labels"].shape), (num_frames,)),
            "boxes": (tuple(target["boxes"].shape), (num_frames, 4)),
            "valid": (tuple(target["valid"].shape), (num_frames,)),
            "masks": (tuple(masks.shape[:1]), (num_frames,)),
        }
        for key, (got, expected) in shapes.items():
            if got != expected:
                raise ValueError(
                    f"target {index}: {key} has leading shape {got}, expected {expected} to match the "
                    f"{num_frames} frame(s) of the predictions (A2D/JHMDB targets hold one frame, so the "
                    "model output must then have T=1)"
                )

    padded_h = _round_up(max(t["masks"].shape[-2] for t in targets), size_divisibility)
    padded_w = _round_up(max(t["masks"].shape[-1] for t in targets), size_divisibility)
    grid = (padded_h // stride, padded_w // stride)
    if tuple(mask_size) != grid:
        raise ValueError(
            f"pred_masks are {tuple(mask_size)} but the target masks, padded to {padded_h}x{padded_w} "
            f"(multiple of {size_divisibility}) and taken every {stride} pixels, are {grid}: the model "
            f"input must be padded to the batch's largest size rounded up to {size_divisibility}"
        )

    offset = stride // 2
    masks = torch.zeros(len(targets), num_frames, *grid, dtype=dtype, device=device)
    for index, target in enumerate(targets):
        # Sampling the sample's own masks at the grid positions equals sampling the padded canvas:
        # grid points beyond the sample fall in the zero padding.
        sampled = target["masks"][:, offset::stride, offset::stride]
        masks[index, :, : sampled.shape[-2], : sampled.shape[-1]] = sampled.to(device=device, dtype=dtype)

    return VideoTargets(
        labels=torch.stack([t["labels"] for t in targets]).to(device=device, dtype=torch.int64),
        boxes=torch.stack([t["boxes"] for t in targets]).to(device=device, dtype=dtype),
        valid=torch.stack([t["valid"] for t in targets]).to(device=device) != 0,
        masks=masks,
    )


def check_layer_outputs(outputs: Mapping[str, Any], num_classes: int, batch_size: int, name: str = "outputs") -> None:
    """Raise `ValueError` unless `outputs` holds consistent `pred_logits/boxes/masks` for the batch."""
    missing = [key for key in ("pred_logits", "pred_boxes", "pred_masks") if key not in outputs]
    if missing:
        raise ValueError(f"{name} lacks {missing}")
    logits, boxes, masks = outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"]
    if logits.dim() != 4 or boxes.dim() != 4 or masks.dim() != 5:
        raise ValueError(
            f"{name}: expected pred_logits [B,T,Q,K], pred_boxes [B,T,Q,4], pred_masks [B,T,Q,h,w], got "
            f"{tuple(logits.shape)}, {tuple(boxes.shape)}, {tuple(masks.shape)}"
        )
    b, t, q, k = logits.shape
    if tuple(boxes.shape) != (b, t, q, 4) or tuple(masks.shape[:3]) != (b, t, q):
        raise ValueError(
            f"{name}: pred_boxes {tuple(boxes.shape)} and pred_masks {tuple(masks.shape)} do not match "
            f"pred_logits {tuple(logits.shape)}"
        )
    if k != num_classes:
        raise ValueError(f"{name}: pred_logits have {k} classes, the criterion expects {num_classes}")
    if b != batch_size:
        raise ValueError(f"{name}: batch size {b} but {batch_size} target dicts")


class VideoHungarianMatcher:
    """Per sample, the query that best explains the referred object over the whole clip.

    Cost per query (lower is better), with the weights of `CriterionConfig` (the official ones by
    default):
    `cost_class * c_cls + cost_bbox * c_L1 + cost_giou * c_GIoU + cost_mask * c_focal + cost_dice * c_dice`
    where c_cls is the focal class cost averaged over the valid frames (0 for a sample with none,
    where the official code fails), c_L1 and c_GIoU (= -GIoU)
    are averaged over all frames (invalid ones against their zero box), c_focal is the focal loss
    (alpha `matcher_focal_alpha`) averaged over the clip's T·h·w mask pixels and c_dice = -dice over
    the clip.
    """

    def __init__(self, config: CriterionConfig | None = None, num_classes: int = 1, size_divisibility: int = 32) -> None:
        """Args:
            config: the cost weights, focal parameters and mask stride (default: the released ones).
            num_classes: classes of the model's class head.
            size_divisibility: the multiple the target masks are padded to.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.config = config if config is not None else CriterionConfig()
        stride = self.config.mask_out_stride
        if size_divisibility < 1 or size_divisibility % stride:
            raise ValueError(
                f"size_divisibility ({size_divisibility}) must be a positive multiple of mask_out_stride "
                f"({stride}) so that the padded targets fall on the mask grid"
            )
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility

    @torch.no_grad()
    def cost_matrix(self, outputs: Mapping[str, Tensor], targets: VideoTargets) -> Tensor:
        """The matching cost `[B, Q]` of every query of every sample."""
        logits, boxes, masks = outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"]
        b, t, q, _ = logits.shape
        c = self.config
        alpha, gamma = c.matcher_focal_alpha, c.focal_gamma

        prob = logits.sigmoid()
        if self.num_classes == 1:
            prob = prob[..., 0]
        else:
            labels = targets.labels
            if bool(((labels < 0) | (labels >= self.num_classes)).any()):
                raise ValueError(f"target labels must lie in [0, {self.num_classes}) for multi-class matching")
            prob = prob.gather(-1, labels[:, :, None, None].expand(b, t, q, 1))[..., 0]
        valid = targets.valid.to(prob.dtype)[:, :, None]
        # Frames without the object do not vote on the class; a sample with no valid frame gets 0.
        class_cost = (focal_class_cost(prob, alpha, gamma) * valid).sum(1)
        class_cost = class_cost / valid.sum(1).clamp(min=1)

        target_boxes = targets.boxes[:, :, None, :].expand_as(boxes)
        bbox_cost = (boxes - target_boxes).abs().sum(-1).mean(1)
        giou_cost = -paired_generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes)).mean(1)

        clip_logits = masks.transpose(1, 2).flatten(2)  # [B, Q, T*h*w]
        clip_targets = targets.masks.flatten(1)[:, None, :]  # [B, 1, T*h*w]
        mask_cost = sigmoid_focal_loss(
            clip_logits, clip_targets.expand_as(clip_logits), alpha, gamma
        ).mean(-1)
        dice_cost = -dice_coefficient(clip_logits, clip_targets)

        return (
            c.cost_class * class_cost
            + c.cost_bbox * bbox_cost
            + c.cost_giou * giou_cost
            + c.cost_mask * mask_cost
            + c.cost_dice * dice_cost
        )

    def prepare_targets(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]) -> VideoTargets:
        """Stack and pad the target dicts onto the grid and device of `outputs["pred_masks"]`."""
        masks = outputs["pred_masks"]
        return collate_targets(
            targets,
            masks.shape[1],
            tuple(masks.shape[-2:]),
            stride=self.config.mask_out_stride,
            size_divisibility=self.size_divisibility,
            dtype=masks.dtype,
            device=masks.device,
        )

    @torch.no_grad()
    def __call__(
        self, outputs: Mapping[str, Any], targets: VideoTargets | Sequence[Mapping[str, Any]]
    ) -> Tensor:
        """Matched query index per sample, `[B]` int64.

        Args:
            outputs: one decoder layer's `pred_logits [B,T,Q,K]`, `pred_boxes [B,T,Q,4]` (cxcywh)
                and `pred_masks [B,T,Q,h,w]` (other keys are ignored).
            targets: B target dicts in the official datasets' format, or `VideoTargets`.
        """
        if isinstance(targets, VideoTargets):
            batch_size = targets.valid.shape[0]
        else:
            batch_size = len(targets)
        check_layer_outputs(outputs, self.num_classes, batch_size)
        if isinstance(targets, VideoTargets):
            b, t, _, h, w = outputs["pred_masks"].shape
            if tuple(targets.masks.shape) != (b, t, h, w):
                raise ValueError(
                    f"target masks {tuple(targets.masks.shape)} do not fit pred_masks {tuple(outputs['pred_masks'].shape)}"
                )
        else:
            targets = self.prepare_targets(outputs, targets)
        # argmin returns the first minimal index, the official tie-break.
        return self.cost_matrix(outputs, targets).argmin(dim=1)
