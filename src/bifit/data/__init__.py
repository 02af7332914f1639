"""Datasets and batching.

Every dataset yields ``(video, target)``: video float32 [T, 3, H, W] ImageNet-normalised, target a
dict in the official Ref-YouTube-VOS training format (see :func:`bifit.data.targets.build_target`).
:func:`collate_fn` turns a list of items into ``(videos, captions, targets)``;
:func:`collate_expressions` also takes items holding several expressions of one video.
"""

from bifit.data.collate import collate_expressions, collate_fn
from bifit.data.synthetic import SceneConfig, SyntheticClip, SyntheticObject, SyntheticRVOS, generate_clip
from bifit.data.targets import boxes_from_masks, build_target, check_boxes, normalize_boxes, normalize_frames

__all__ = [
    "SceneConfig",
    "SyntheticClip",
    "SyntheticObject",
    "SyntheticRVOS",
    "boxes_from_masks",
    "build_target",
    "check_boxes",
    "collate_expressions",
    "collate_fn",
    "generate_clip",
    "normalize_boxes",
    "normalize_frames",
]
