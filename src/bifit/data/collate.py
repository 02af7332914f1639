"""Batching of ``(video, target)`` dataset items.

Videos keep their own sizes: the model pads a batch itself (bottom/right, as the official
``nested_tensor_from_videos_list`` does), so collation only regroups the items.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["collate_fn"]


def collate_fn(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[list[Tensor], list[str], list[dict[str, Any]]]:
    """Regroup a batch of dataset items.

    Args:
        batch: items ``(video, target)``, video float32 [T, 3, H_i, W_i], target a dict holding at
            least ``caption``.

    Returns:
        ``(videos, captions, targets)``: the B videos [T, 3, H_i, W_i] unchanged, the B captions
        and the B target dicts, in batch order.
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    videos: list[Tensor] = []
    captions: list[str] = []
    targets: list[dict[str, Any]] = []
    for position, item in enumerate(batch):
        if len(item) != 2:
            raise ValueError(f"batch item {position} must be a (video, target) pair, got {len(item)} elements")
        video, target = item
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"batch item {position}: video must be [T, 3, H, W], got {tuple(video.shape)}")
        if "caption" not in target:
            raise ValueError(f"batch item {position}: target has no 'caption'")
        videos.append(video)
        captions.append(target["caption"])
        targets.append(target)
    return videos, captions, targets
