"""Training components of bifit: the video-level matcher and the BIFIT criterion."""

from bifit.training.criterion import CriterionConfig, VideoSetCriterion, build_criterion, num_valid_frames
from bifit.training.matcher import VideoHungarianMatcher, VideoTargets, collate_targets

__all__ = [
    "CriterionConfig",
    "VideoHungarianMatcher",
    "VideoSetCriterion",
    "VideoTargets",
    "build_criterion",
    "collate_targets",
    "num_valid_frames",
]
