"""Batching of ``(video, target)`` dataset items.

Videos keep their own sizes: the model pads a batch itself (bottom/right, as the official
``nested_tensor_from_videos_list`` does), so collation only regroups the items.

An item may also carry several expressions of its video, ``(video, [target, ...])``; then
:func:`collate_expressions` keeps the video once and records which video each caption belongs to,
so that the model runs its backbone once per video (``BifitModel(..., caption_videos=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["collate_expressions", "collate_fn"]


def collate_expressions(
    batch: Sequence[tuple[Tensor, dict[str, Any] | list[dict[str, Any]]]],
) -> tuple[list[Tensor], list[str], list[dict[str, Any]], list[int]]:
    """Regroup items that hold one target or a list of targets (expressions) each.

    Args:
        batch: items ``(video, target)`` or ``(video, [target, ...])``; video float32
            [T, 3, H_i, W_i], every target a dict holding at least ``caption``.

    Returns:
        ``(videos, captions, targets, caption_videos)``: the B videos unchanged, the N >= B captions
        and targets in item order, and for each caption the index of its video in ``videos``.
    """
    if len(batch) == 0:
        raise ValueError("cannot collate an empty batch")
    videos: list[Tensor] = []
    captions: list[str] = []
    targets: list[dict[str, Any]] = []
    caption_videos: list[int] = []
    for position, item in enumerate(batch):
        if len(item) != 2:
            raise ValueError(f"batch item {position} must be a (video, target) pair, got {len(item)} elements")
        video, item_targets = item
        if video.ndim != 4 or video.shape[1] != 3:
            raise ValueError(f"batch item {position}: video must be [T, 3, H, W], got {tuple(video.shape)}")
        if isinstance(item_targets, dict):
            item_targets = [item_targets]
        if not item_targets:
            raise ValueError(f"batch item {position} holds no target")
        for target in item_targets:
            if "caption" not in target:
                raise ValueError(f"batch item {position}: target has no 'caption'")
            captions.append(target["caption"])
            targets.append(target)
            caption_videos.append(len(videos))
        videos.append(video)
    return videos, captions, targets, caption_videos


def collate_fn(
    batch: Sequence[tuple[Tensor, dict[str, Any]]],
) -> tuple[list[Tensor], list[str], list[dict[str, Any]]]:
    """Regroup a batch of dataset items with one target each.

    Args:
        batch: items ``(video, target)``, video float32 [T, 3, H_i, W_i], target a dict holding at
            least ``caption``.

    Returns:
        ``(videos, captions, targets)``: the B videos [T, 3, H_i, W_i] unchanged, the B captions
        and the B target dicts, in batch order.
    """
    videos, captions, targets, _ = collate_expressions(batch)
    if len(captions) != len(videos):
        raise ValueError(
            "batch items hold several expressions each; collate them with collate_expressions, which also "
            "says which video each caption belongs to"
        )
    return videos, captions, targets
