"""The BIFIT training criterion: video-level matching, then focal/L1/GIoU/focal-mask/dice losses.

Every decoder layer (the final one and each auxiliary one) is matched on its own and gets the
five loss terms; all terms share one normaliser N, the number of valid (object visible) frames in
the batch, averaged over distributed ranks and clamped to at least 1.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from bifit.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from bifit.training.criterion_config import LOSS_NAMES, CriterionConfig
from bifit.training.losses import dice_loss, sigmoid_focal_loss
from bifit.training.matcher import VideoHungarianMatcher, VideoTargets, check_layer_outputs

__all__ = ["CriterionConfig", "VideoSetCriterion", "build_criterion", "num_valid_frames"]

def num_valid_frames(valid: Tensor) -> float:
    """The loss normaliser N: valid frames in the batch, averaged over ranks, at least 1.

    `valid` is `[B, T]`. Under an initialised `torch.distributed` the count is all-reduced (summed)
    and divided by the world size, so every rank uses the same N.
    """
    count = valid.sum().to(torch.float32).reshape(1)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        world_size = dist.get_world_size()
    return torch.clamp(count / world_size, min=1).item()


class VideoSetCriterion:
    """Callable `criterion(outputs, targets) -> dict of losses` for BIFIT training.

    `outputs` holds `pred_logits [B,T,Q,K]`, `pred_boxes [B,T,Q,4]` (normalised cxcywh),
    `pred_masks [B,T,Q,h,w]` (mask logits on the stride-4 grid of the padded input) and optionally
    `aux_outputs`, a list of dicts with the same keys for the earlier decoder layers. `targets` is
    a list of B dicts in the official datasets' format (`labels [T]`, `boxes [T,4]`,
    `masks [T,H,W]` at the sample's own size, `valid [T]`, ...); A2D/JHMDB targets hold one frame
    and the outputs then have T=1.

    The result maps `loss_ce`, `loss_bbox`, `loss_giou`, `loss_mask`, `loss_dice` (final layer)
    and the same names suffixed `_0`, `_1`, … (auxiliary layers, in order) to scalar tensors, and
    `loss` to their weighted sum.
    """

    def __init__(self, config: CriterionConfig | None = None, num_classes: int = 1, size_divisibility: int = 32) -> None:
        """Args:
            config: the coefficients (default: the released ones).
            num_classes: classes of the model's class head (its `BifitConfig.num_classes`).
            size_divisibility: the multiple the training batches are padded to.
        """
        self.config = config if config is not None else CriterionConfig()
        # The matcher checks both facts: it pads the targets for the losses too (`prepare_targets`).
        self.matcher = VideoHungarianMatcher(self.config, num_classes, size_divisibility)

    @property
    def num_classes(self) -> int:
        return self.matcher.num_classes

    @property
    def size_divisibility(self) -> int:
        return self.matcher.size_divisibility

    def prepare_targets(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]) -> VideoTargets:
        """Stack and pad the target dicts onto the grid and device of `outputs["pred_masks"]`."""
        return self.matcher.prepare_targets(outputs, targets)

    def layer_losses(
        self, outputs: Mapping[str, Tensor], targets: VideoTargets, matched: Tensor, num_boxes: float
    ) -> dict[str, Tensor]:
        """The five loss terms of one decoder layer, given the matched query `[B]` per sample."""
        logits, boxes, masks = outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"]
        b, t, _, k = logits.shape
        batch_index = torch.arange(b, device=logits.device)[:, None].expand(b, t)
        frame_index = torch.arange(t, device=logits.device)[None, :].expand(b, t)
        query_index = matched.to(logits.device)[:, None].expand(b, t)

        # Positive class only at the matched query of frames where the object is visible; the
        # official no-object label (== num_classes) has no column, so it stays all-negative.
        if self.num_classes == 1:
            class_index = torch.zeros_like(targets.labels)
            positive = targets.valid
        else:
            class_index = targets.labels.clamp(max=k - 1)
            positive = targets.valid & (targets.labels < k)
        class_targets = torch.zeros_like(logits)
        class_targets[batch_index, frame_index, query_index, class_index] = positive.to(logits.dtype)
        loss_ce = sigmoid_focal_loss(logits, class_targets, self.config.focal_alpha, self.config.focal_gamma)

        # Boxes count in every frame, invalid ones against their zero box, as in the official code.
        src_boxes = boxes[batch_index, frame_index, query_index]  # [B, T, 4]
        loss_bbox = F.l1_loss(src_boxes, targets.boxes, reduction="none")
        giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(targets.boxes))

        src_masks = masks[batch_index, frame_index, query_index].flatten(1)  # [B, T*h*w]
        target_masks = targets.masks.flatten(1)
        loss_mask = sigmoid_focal_loss(src_masks, target_masks, self.config.mask_focal_alpha, self.config.focal_gamma)

        return {
            "loss_ce": loss_ce.sum() / num_boxes,
            "loss_bbox": loss_bbox.sum() / num_boxes,
            "loss_giou": (1 - giou).sum() / num_boxes,
            "loss_mask": loss_mask.mean(1).sum() / num_boxes,
            "loss_dice": dice_loss(src_masks, target_masks).sum() / num_boxes,
        }

    def __call__(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        """All loss terms and their weighted total under `loss` (see the class docstring)."""
        aux_outputs = list(outputs.get("aux_outputs", []))
        layers = [*aux_outputs, outputs]
        names = [f"aux_outputs[{i}]" for i in range(len(aux_outputs))] + ["outputs"]
        for layer, name in zip(layers, names):
            check_layer_outputs(layer, self.num_classes, len(targets), name)
            if layer["pred_masks"].shape != outputs["pred_masks"].shape:
                raise ValueError(
                    f"{name}: pred_masks {tuple(layer['pred_masks'].shape)} differ from the final layer's "
                    f"{tuple(outputs['pred_masks'].shape)}"
                )

        video_targets = self.prepare_targets(outputs, targets)
        num_boxes = num_valid_frames(video_targets.valid)

        losses: dict[str, Tensor] = {}
        suffixes = [""] + [f"_{i}" for i in range(len(aux_outputs))]
        for layer, suffix in zip([outputs, *aux_outputs], suffixes):
            matched = self.matcher(layer, video_targets)
            for name, value in self.layer_losses(layer, video_targets, matched, num_boxes).items():
                losses[name + suffix] = value

        weights = self.config.weight_dict(len(aux_outputs))
        losses["loss"] = sum(weights[name] * value for name, value in losses.items())
        return losses


def build_criterion(
    config: CriterionConfig | None = None, num_classes: int = 1, size_divisibility: int = 32
) -> VideoSetCriterion:
    """The BIFIT criterion; by default the released configuration (binary, official weights, padding
    to a multiple of 32). See :class:`VideoSetCriterion` for the arguments."""
    return VideoSetCriterion(config, num_classes, size_divisibility)
