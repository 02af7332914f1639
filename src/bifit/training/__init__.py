"""Training components of bifit: the video-level matcher, the BIFIT criterion, the official
optimiser recipe and the (distributed, resumable) training loop. Imported on first use."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "TRAINING_PRESETS": ".config",
    "TrainingConfig": ".config",
    "apply_overrides": ".config",
    "get_training_preset": ".config",
    "training_preset_names": ".config",
    "CriterionConfig": ".criterion_config",
    "VideoSetCriterion": ".criterion",
    "build_criterion": ".criterion",
    "num_valid_frames": ".criterion",
    "TrainResult": ".loop",
    "train": ".loop",
    "VideoHungarianMatcher": ".matcher",
    "VideoTargets": ".matcher",
    "collate_targets": ".matcher",
    "build_optimizer": ".optim",
    "build_scheduler": ".optim",
    "parameter_groups": ".optim",
    "TrainingInterrupted": ".preemption",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .config import TRAINING_PRESETS, TrainingConfig, apply_overrides, get_training_preset, training_preset_names
    from .criterion import VideoSetCriterion, build_criterion, num_valid_frames
    from .criterion_config import CriterionConfig
    from .loop import TrainResult, train
    from .matcher import VideoHungarianMatcher, VideoTargets, collate_targets
    from .optim import build_optimizer, build_scheduler, parameter_groups
    from .preemption import TrainingInterrupted
