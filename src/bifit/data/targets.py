"""Training targets built from masks, with the box rules of the official Ref-YouTube-VOS loader.

The official loader takes a frame's box from the inclusive pixel bounds of its mask (``x2`` is the
index of the last column, no ``+1``). After the spatial transforms its ``Check`` step marks a frame
valid only if ``x2 > x1`` and ``y2 > y1`` strictly and zeroes the box of every other frame, so an
object one pixel wide (or tall) is invalid yet keeps its mask. The boxes are finally normalised to
``(cx, cy, w, h)`` by the sample's own width and height.

A benchmark dataset applies :func:`boxes_from_masks` to the raw masks, runs its transforms on the
``xyxy`` boxes, then :func:`check_boxes` and :func:`normalize_boxes`; :func:`build_target` does all
three for data that needs no transform (the synthetic clips).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "boxes_from_masks",
    "build_target",
    "check_boxes",
    "normalize_boxes",
]


def _as_array(data: Tensor | np.ndarray) -> np.ndarray:
    return data.detach().cpu().numpy() if isinstance(data, Tensor) else np.asarray(data)


def check_boxes(boxes_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the official validity rule to absolute ``xyxy`` boxes.

    Args:
        boxes_xyxy: float [T, 4] boxes ``(x1, y1, x2, y2)``.

    Returns:
        ``(boxes, valid)``: float32 [T, 4], a copy with the boxes of invalid frames set to 0, and
        int32 [T], 1 where ``x2 > x1`` and ``y2 > y1``.
    """
    if boxes_xyxy.ndim != 2 or boxes_xyxy.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [T, 4], got {tuple(boxes_xyxy.shape)}")
    boxes = boxes_xyxy.to(torch.float32).clone()
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes[~keep] = 0.0
    return boxes, keep.to(torch.int32)


def boxes_from_masks(masks: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Boxes of a clip's per-frame masks, as the official loader derives them.

    Args:
        masks: [T, H, W] tensor or array, bool or numeric (non-zero counts as foreground).

    Returns:
        ``(boxes_xyxy, valid)``: float32 [T, 4] inclusive pixel bounds ``(x1, y1, x2, y2)`` in pixels
        (0 for empty or degenerate frames) and int32 [T] (see :func:`check_boxes`).
    """
    # numpy rather than torch: data loading runs beside training, and small multi-threaded torch
    # reductions there are slow.
    fg = _as_array(masks) != 0
    if fg.ndim != 3:
        raise ValueError(f"masks must have shape [T, H, W], got {tuple(fg.shape)}")
    cols = fg.any(axis=1)  # [T, W]
    rows = fg.any(axis=2)  # [T, H]
    width, height = cols.shape[1], rows.shape[1]
    # argmax finds the first True; on the flipped axis it finds the last one.
    boxes = np.stack(
        [
            cols.argmax(axis=1),
            rows.argmax(axis=1),
            width - 1 - cols[:, ::-1].argmax(axis=1),
            height - 1 - rows[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.float32)
    boxes[~cols.any(axis=1)] = 0.0
    return check_boxes(torch.from_numpy(boxes))


def normalize_boxes(boxes_xyxy: Tensor, size: Sequence[int]) -> Tensor:
    """Convert absolute ``xyxy`` boxes to ``cxcywh`` normalised by the image size.

    Args:
        boxes_xyxy: float [T, 4] in pixels.
        size: ``(H, W)`` of the sample the boxes belong to.

    Returns:
        float32 [T, 4] ``(cx / W, cy / H, w / W, h / H)``; an all-zero box stays all zero.
    """
    if len(size) != 2:
        raise ValueError(f"size must be (H, W), got {tuple(size)}")
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {(height, width)}")
    x1, y1, x2, y2 = boxes_xyxy.to(torch.float32).unbind(-1)
    cxcywh = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
    return cxcywh / torch.tensor([width, height, width, height], dtype=torch.float32)


def build_target(
    masks: Tensor,
    caption: str,
    frames_idx: Sequence[int] | Tensor | None = None,
    orig_size: Sequence[int] | None = None,
) -> dict[str, Tensor | str]:
    """A training target in the official Ref-YouTube-VOS format for untransformed masks.

    Args:
        masks: [T, H, W] masks of the referred object (non-zero = object), tensor or array.
        caption: the referring expression; lower-cased and whitespace-normalised as the official
            loader does.
        frames_idx: the T frame indices within the video; defaults to ``0 .. T-1``.
        orig_size: ``(H, W)`` of the source video; defaults to the mask size.

    Returns:
        dict with ``labels`` int64 [T] (zeros: one class), ``boxes`` float32 [T, 4] normalised
        cxcywh, ``masks`` bool [T, H, W], ``valid`` int32 [T], ``caption`` str, ``orig_size`` and
        ``size`` int64 [2] ``(H, W)``, ``frames_idx`` int64 [T].
    """
    foreground = _as_array(masks) != 0
    if foreground.ndim != 3:
        raise ValueError(f"masks must have shape [T, H, W], got {tuple(foreground.shape)}")
    num_frames, height, width = foreground.shape
    if frames_idx is None:
        frames_idx = torch.arange(num_frames, dtype=torch.int64)
    frames_idx = torch.as_tensor(frames_idx, dtype=torch.int64)
    if frames_idx.shape != (num_frames,):
        raise ValueError(f"frames_idx must have {num_frames} entries, got {tuple(frames_idx.shape)}")
    boxes, valid = boxes_from_masks(foreground)
    size = torch.tensor([height, width], dtype=torch.int64)
    return {
        "frames_idx": frames_idx,
        "labels": torch.zeros(num_frames, dtype=torch.int64),
        "boxes": normalize_boxes(boxes, (height, width)),
        "masks": torch.from_numpy(foreground),
        "valid": valid,
        "caption": " ".join(caption.lower().split()),
        "orig_size": size.clone() if orig_size is None else torch.as_tensor(orig_size, dtype=torch.int64),
        "size": size,
    }
