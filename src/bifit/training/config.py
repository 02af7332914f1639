"""Training configuration and the named training recipes.

`TrainingConfig` holds everything a run needs besides the output directory: the model
(`BifitConfig`), the data, the official optimisation recipe (AdamW, parameter groups, gradient
clipping, step LR drops by epoch) and the engineering around it (batching, accumulation, mixed
precision, checkpoints, logging).

Presets:

- `ytvos_r50`: the official Ref-YouTube-VOS training (`opts.py` defaults with the released
  flags): ResNet-50, RoBERTa frozen, 6-frame clips, batch 1 per GPU, 10 epochs, LR drops at
  epochs 6 and 8.
- `a2d_r50`: the A2D-Sentences recipe of the official scripts (`dist_train_a2d.sh` of
  ReferFormer, on which BIFIT is built): batch 2 per GPU, 6 epochs, LR drops at 3 and 5,
  fine-tuned from Ref-COCO-pretrained weights (`init_checkpoint`).
- `synthetic_tiny`: the `tiny` model on the procedurally generated clips, tuned to learn on two
  CPU cores in minutes.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..config import MINILM_PACKAGE, BifitConfig, ConfigFields, get_preset
from .criterion_config import CriterionConfig

__all__ = [
    "BackbonePretrainingConfig",
    "DATASETS",
    "TRAINING_PRESETS",
    "TrainingConfig",
    "apply_overrides",
    "get_training_preset",
    "training_preset_names",
]

DATASETS = ("synthetic", "ytvos", "davis", "a2d", "jhmdb")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class TrainingConfig(ConfigFields):
    """One training run. Defaults are the official Ref-YouTube-VOS recipe (`ytvos_r50`).

    Attributes:
        model: the architecture; `model.num_frames` is the clip length T of the training data and
            `model.text_encoder` the pretrained text encoder (Hugging Face id or directory).
        data: one of `DATASETS`.
        data_root: dataset root (not needed for `synthetic`).
        max_skip: largest offset of the sampled neighbour frames (official 3).
        synthetic_samples: clips per epoch of the synthetic dataset.
        synthetic_size: (H, W) of the synthetic frames.
        synthetic_twin_prob: the synthetic scenes' `twin_prob` (`SceneConfig`): how often a clip
            holds two objects told apart by their motion alone. 0 (the generator's default) leaves
            them to chance.
        expressions_per_clip: objects referred to per synthetic clip (1, as the official datasets);
            with more, the backbone runs once per clip for all of them (see `SyntheticRVOS`).
        data_seed: seed of the data (synthetic clips, augmentations); fixed across ranks.
        epochs: number of epochs.
        lr: learning rate of every parameter outside the groups below.
        lr_backbone: backbone (`backbone.*`; official `backbone.0`).
        lr_text_encoder: text encoder (empty group when it is frozen).
        lr_text_fusion: BVLI's text branch (`bvli.text_from_vision`; official `text_fusion_module`).
        lr_linear_proj_mult: factor on `lr` for the deformable attention's `sampling_offsets` and
            `reference_points`.
        weight_decay: AdamW weight decay.
        adam_eps: AdamW's epsilon (official: torch's default 1e-8). A larger value makes the
            first steps proportional to the gradient instead of about lr x sign(gradient).
        lr_drop: epochs after which every learning rate is multiplied by `lr_gamma` (MultiStepLR
            stepped once per epoch, as the official loop).
        lr_gamma: the drop factor.
        clip_max_norm: gradient clipping by total norm (0 disables it).
        batch_size: clips per device per forward pass.
        accum_steps: forward/backward passes per optimiser step. The global batch is
            batch_size x world size x accum_steps.
        max_steps: stop after this many optimiser steps (None: run all epochs).
        num_workers: data-loading worker processes per rank.
        seed: run seed; rank r seeds its generators with seed + r, as the official code.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N".
        amp: mixed precision on CUDA: "none", "bf16" or "fp16" (with loss scaling).
        size_divisibility: pad each batch to a multiple of this (official 32).
        disable_dropout: switch every dropout off (the model's, the fixed 0.1 of the text
            resizer and the text encoder's), making a step a deterministic function of the data.
        find_unused_parameters: passed to DistributedDataParallel (official True).
        activation_checkpointing: keep less for the backward and recompute it there
            (`BifitModel.set_activation_checkpointing`): a smaller peak memory for a longer step;
            without dropout the same losses and gradients up to rounding.
        log_every: write a metrics line every this many optimiser steps.
        save_every: write a training checkpoint every this many optimiser steps (0: only at the
            end of every epoch and of the run).
        keep_last: training checkpoints kept on disk (older ones are deleted).
        init_checkpoint: weights to start from: an official `.pth` (its class heads are dropped
            and missing modules stay random, as the official `--pretrained_weights`) or a bifit
            checkpoint directory.
        backbone_weights: a torchvision ResNet state dict (`.pth`) for the backbone.
        criterion: the matching costs and loss coefficients (`CriterionConfig`; official defaults).
            Set one with `--set criterion.<field>=<value>`, e.g. `criterion.dice_loss_coef=3`. The
            number of classes comes from `model.num_classes` and the padding multiple from
            `size_divisibility`.
    """

    FILE_KIND: ClassVar[str] = "training config"

    model: BifitConfig = field(default_factory=lambda: get_preset("bifit_r50"))
    data: str = "ytvos"
    data_root: str | None = None
    max_skip: int = 3
    synthetic_samples: int = 2000
    synthetic_size: tuple[int, int] = (64, 96)
    synthetic_twin_prob: float = 0.0
    expressions_per_clip: int = 1
    data_seed: int = 0
    epochs: int = 10
    lr: float = 5e-5
    lr_backbone: float = 1e-5
    lr_text_encoder: float = 1e-5
    lr_text_fusion: float = 5e-5
    lr_linear_proj_mult: float = 1.0
    weight_decay: float = 5e-4
    adam_eps: float = 1e-8
    lr_drop: tuple[int, ...] = (6, 8)
    lr_gamma: float = 0.1
    clip_max_norm: float = 0.1
    batch_size: int = 1
    accum_steps: int = 1
    max_steps: int | None = None
    num_workers: int = 4
    seed: int = 42
    device: str = "auto"
    amp: str = "none"
    size_divisibility: int = 32
    disable_dropout: bool = False
    find_unused_parameters: bool = True
    activation_checkpointing: bool = False
    log_every: int = 10
    save_every: int = 0
    keep_last: int = 3
    init_checkpoint: str | None = None
    backbone_weights: str | None = None
    criterion: CriterionConfig = field(default_factory=CriterionConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.data not in DATASETS:
            problems.append(f"data must be one of {', '.join(DATASETS)}, got {self.data!r}")
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "keep_last", "size_divisibility",
                     "synthetic_samples", "max_skip", "expressions_per_clip"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("num_workers", "save_every", "seed", "data_seed", "weight_decay", "clip_max_norm"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("lr", "lr_backbone", "lr_text_encoder", "lr_text_fusion", "lr_linear_proj_mult", "lr_gamma"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be non-negative, got {getattr(self, name)}")
        if not self.adam_eps > 0:
            problems.append(f"adam_eps must be positive, got {self.adam_eps}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be at least 1, got {self.max_steps}")
        if list(self.lr_drop) != sorted(self.lr_drop) or any(e < 1 for e in self.lr_drop):
            problems.append(f"lr_drop must list increasing positive epochs, got {list(self.lr_drop)}")
        if not 0.0 <= self.synthetic_twin_prob <= 1.0:
            problems.append(f"synthetic_twin_prob must lie in [0, 1], got {self.synthetic_twin_prob}")
        if len(self.synthetic_size) != 2 or min(self.synthetic_size) < 32:
            problems.append(f"synthetic_size must be (H, W) with both sides >= 32, got {self.synthetic_size}")
        if self.expressions_per_clip > 1 and self.data != "synthetic":
            problems.append(f"expressions_per_clip > 1 needs data=synthetic, got data={self.data!r}")
        if self.size_divisibility % 4:
            problems.append(f"size_divisibility must be a multiple of the mask stride 4, got {self.size_divisibility}")
        if problems:
            raise ValueError("invalid TrainingConfig: " + "; ".join(problems))

    @property
    def num_frames(self) -> int:
        return self.model.num_frames


@dataclass(frozen=True)
class BackbonePretrainingConfig:
    """How the backbone is pretrained.

    Attributes:
        steps: optimiser steps.
        clips_per_step: synthetic clips per step; every frame of a clip is a training image.
        num_frames: frames per clip.
        size: ``(H, W)`` of the frames; the size the referring model will be trained at.
        lr, weight_decay: AdamW settings.
        grad_clip: maximal gradient norm.
        background_weight: weight of background pixels in the loss (object pixels weigh 1): the
            background is most of every frame but the easy part.
        seed: seed of the clips and of the initial weights.
    """

    steps: int = 1500
    clips_per_step: int = 6
    num_frames: int = 6
    size: tuple[int, int] = (96, 128)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    background_weight: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "clips_per_step", "num_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "grad_clip", "background_weight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        from ..data.synthetic import SceneConfig

        SceneConfig(num_frames=self.num_frames, size=tuple(self.size))  # validates the frame size


def _tiny_synthetic_model() -> BifitConfig:
    # One query: with several, the class score picked the wrong one of otherwise good masks.
    return get_preset("tiny").replace(num_queries=1, text_encoder=MINILM_PACKAGE)


TRAINING_PRESETS: dict[str, TrainingConfig] = {
    "ytvos_r50": TrainingConfig(),
    "a2d_r50": TrainingConfig(data="a2d", batch_size=2, epochs=6, lr_drop=(3, 5)),
    "synthetic_tiny": TrainingConfig(
        model=_tiny_synthetic_model(),
        data="synthetic",
        # 96 x 128 rather than smaller frames: the masks come at stride 4, and the DAVIS contour measure
        # allows 2 pixels of slack at this size (1 pixel at 64 x 96).
        synthetic_size=(96, 128),
        # Two objects of every clip per step share its backbone pass: cheaper per expression, and
        # every step contrasts expressions about the same frames.
        expressions_per_clip=2,
        batch_size=3,
        # 100 steps per epoch; 900 steps take about 10 minutes on 2 CPU cores.
        synthetic_samples=300,
        epochs=9,
        lr_drop=(7,),
        lr=4e-4,
        lr_backbone=4e-4,
        lr_text_fusion=4e-4,
        num_workers=0,
        log_every=10,
        save_every=100,
        keep_last=2,
        disable_dropout=True,
    ),
}


def training_preset_names() -> list[str]:
    return sorted(TRAINING_PRESETS)


def get_training_preset(name: str) -> TrainingConfig:
    """The named training recipe."""
    try:
        return TRAINING_PRESETS[name]
    except KeyError:
        choices = ", ".join(training_preset_names())
        raise ValueError(f"unknown training preset {name!r}; choose one of {choices}") from None


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """`value` (parsed JSON or a raw string) as the type `annotation` describes."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{key}: cannot use {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{key} needs true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} needs an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} needs a number, got {value!r}")
        return float(value)
    if annotation is str:
        return value if isinstance(value, str) else json.dumps(value)
    return value


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: TrainingConfig, overrides: list[str] | tuple[str, ...]) -> TrainingConfig:
    """Apply `key=value` overrides to a training config.

    A key names a `TrainingConfig` field, a `BifitConfig` field (with or without the prefix `model.`)
    or, with the prefix `criterion.`, a `CriterionConfig` field. Values are JSON (`3`, `1e-4`,
    `[4, 8]`, `true`, `null`) or a bare string.

    Raises:
        ValueError: an unknown key, a value of the wrong type, or a resulting config that is invalid.
    """
    training_types = typing.get_type_hints(TrainingConfig)
    model_types = typing.get_type_hints(BifitConfig)
    criterion_types = typing.get_type_hints(CriterionConfig)
    training_changes: dict[str, Any] = {}
    model_changes: dict[str, Any] = {}
    criterion_changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value")
        value = _parse_value(text.strip())
        if key.startswith("model."):
            name = key.removeprefix("model.")
            if name not in model_types:
                raise ValueError(f"unknown model field {name!r} in override {item!r}")
            model_changes[name] = _coerce(value, model_types[name], key)
        elif key.startswith("criterion."):
            name = key.removeprefix("criterion.")
            if name not in criterion_types:
                raise ValueError(
                    f"unknown criterion field {name!r} in override {item!r} "
                    f"(one of {', '.join(sorted(criterion_types))})"
                )
            criterion_changes[name] = _coerce(value, criterion_types[name], key)
        elif key in training_types and key not in ("model", "criterion"):
            training_changes[key] = _coerce(value, training_types[key], key)
        elif key in model_types:
            model_changes[key] = _coerce(value, model_types[key], key)
        else:
            raise ValueError(
                f"unknown setting {key!r} in override {item!r} (not a TrainingConfig or BifitConfig field)"
            )
    model = config.model.replace(**model_changes) if model_changes else config.model
    criterion = config.criterion.replace(**criterion_changes) if criterion_changes else config.criterion
    return config.replace(model=model, criterion=criterion, **training_changes)
