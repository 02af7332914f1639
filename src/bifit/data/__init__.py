"""Datasets and batching.

Every dataset yields ``(video, target)``: video float32 [T, 3, H, W] ImageNet-normalised, target a
dict in the official Ref-YouTube-VOS training format (see :func:`bifit.data.targets.build_target`).
:func:`collate_fn` turns a list of items into ``(videos, captions, targets)``;
:func:`collate_expressions` also takes items holding several expressions of one video. The names
are imported on first use, so that torch-free modules of this package load without torch.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "collate_expressions": ".collate",
    "collate_fn": ".collate",
    "SceneConfig": ".synthetic",
    "SyntheticClip": ".synthetic",
    "SyntheticObject": ".synthetic",
    "SyntheticRVOS": ".synthetic",
    "generate_clip": ".synthetic",
    "boxes_from_masks": ".targets",
    "build_target": ".targets",
    "check_boxes": ".targets",
    "normalize_boxes": ".targets",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .collate import collate_expressions, collate_fn
    from .synthetic import SceneConfig, SyntheticClip, SyntheticObject, SyntheticRVOS, generate_clip
    from .targets import boxes_from_masks, build_target, check_boxes, normalize_boxes
