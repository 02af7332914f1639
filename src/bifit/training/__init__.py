"""Training components of bifit: the video-level matcher, the BIFIT criterion, the official
optimiser recipe and the (distributed, resumable) training loop."""

from bifit.training.config import (
    TRAINING_PRESETS,
    TrainingConfig,
    apply_overrides,
    get_training_preset,
    training_preset_names,
)
from bifit.training.criterion import CriterionConfig, VideoSetCriterion, build_criterion, num_valid_frames
from bifit.training.loop import TrainResult, train
from bifit.training.matcher import VideoHungarianMatcher, VideoTargets, collate_targets
from bifit.training.optim import build_optimizer, build_scheduler, parameter_groups
from bifit.training.preemption import TrainingInterrupted

__all__ = [
    "CriterionConfig",
    "TRAINING_PRESETS",
    "TrainResult",
    "TrainingInterrupted",
    "TrainingConfig",
    "VideoHungarianMatcher",
    "VideoSetCriterion",
    "VideoTargets",
    "apply_overrides",
    "build_criterion",
    "build_optimizer",
    "build_scheduler",
    "collate_targets",
    "get_training_preset",
    "num_valid_frames",
    "parameter_groups",
    "train",
    "training_preset_names",
]
