"""Pretrain a ResNet backbone on synthetic frames: per-pixel shape, colour and size of the objects.

The official BIFIT starts from an ImageNet-trained ResNet. Without network access there is no such
file here, and a backbone trained from scratch inside the referring task learns colour, size and
position quickly but shape hardly at all (a linear probe of its stride-8 features reads colour and
size 99% of the time, shape 59%; `benchmarks/probe_backbone_attributes.py`). This stage stands in for
ImageNet pretraining on the synthetic domain: a 1 x 1 classifier on each of the stages the
transformer reads (strides 8, 16 and 32) labels every pixel with the shape, colour and size of
the object it belongs to (or background). The result is a torchvision-format state dict that
`TrainingConfig.backbone_weights` (``bifit train --backbone-weights``) loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BifitConfig
from .config import BackbonePretrainingConfig
from ..data.synthetic import COLOURS, SHAPES, SIZES, SceneConfig, SyntheticClip, generate_clip
from ..data.normalization import normalize_frames
from ..devices import resolve_device
from ..modeling.backbone import ResNetBackbone

__all__ = [
    "ATTRIBUTE_CLASSES",
    "AttributeHeads",
    "BackbonePretrainingConfig",
    "attribute_labels",
    "attribute_loss",
    "pretrain_backbone",
]

# Label spaces, in the order of `attribute_labels`; class 0 is the background in each.
ATTRIBUTE_CLASSES: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES}
)
# The transformer reads layer2..layer4; layer1 only feeds the mask head's FPN.
_SUPERVISED_STAGES = (1, 2, 3)
_LABEL_STRIDE = 4


def attribute_labels(clip: SyntheticClip) -> np.ndarray:
    """Per-pixel labels of a clip: int64 [3, T, H, W] holding, for shape, colour and size (the order of
    :data:`ATTRIBUTE_CLASSES`), 1 + the index of the visible object's value, 0 on the background."""
    frames = clip.frames
    labels = np.zeros((len(ATTRIBUTE_CLASSES), *frames.shape[:3]), dtype=np.int64)
    for obj in clip.objects:
        for slot, (name, values) in enumerate(ATTRIBUTE_CLASSES.items()):
            # Masks hold visible pixels only, so objects never compete for a pixel.
            labels[slot][obj.masks] = values.index(getattr(obj.attributes, name)) + 1
    return labels


class AttributeHeads(nn.Module):
    """A 1 x 1 convolution per supervised stage giving the logits of every attribute."""

    def __init__(self, stage_channels: list[int]) -> None:
        super().__init__()
        self.num_classes = [len(values) + 1 for values in ATTRIBUTE_CLASSES.values()]
        self.convs = nn.ModuleList(nn.Conv2d(stage_channels[s], sum(self.num_classes), 1) for s in _SUPERVISED_STAGES)

    def forward(self, stages: list[Tensor], size: tuple[int, int]) -> list[list[Tensor]]:
        """stages: the backbone's four maps; size: ``(h, w)`` of the labels.

        Returns, per supervised stage, per attribute, logits [N, classes, h, w] (bilinearly upsampled).
        """
        outputs = []
        for conv, s in zip(self.convs, _SUPERVISED_STAGES):
            logits = F.interpolate(conv(stages[s]), size=size, mode="bilinear", align_corners=False)
            outputs.append(list(logits.split(self.num_classes, dim=1)))
        return outputs


def attribute_loss(
    logits: list[list[Tensor]], labels: Tensor, background_weight: float
) -> tuple[Tensor, dict[str, float]]:
    """Weighted cross-entropy of every stage and attribute, and the accuracy on object pixels.

    Args:
        logits: from :class:`AttributeHeads`.
        labels: int64 [3, N, h, w] (`attribute_labels` at the logits' resolution).

    Returns:
        ``(loss, accuracy)`` with ``accuracy["<attribute>_s<stride>"]`` over the object pixels.
    """
    on_object = labels[0] > 0
    weight = torch.where(on_object, 1.0, background_weight)
    loss = labels.new_zeros((), dtype=torch.float32)
    accuracy = {}
    for stage, per_attribute in zip(_SUPERVISED_STAGES, logits):
        for slot, (name, attribute_logits) in enumerate(zip(ATTRIBUTE_CLASSES, per_attribute)):
            ce = F.cross_entropy(attribute_logits, labels[slot], reduction="none")
            loss = loss + (ce * weight).sum() / weight.sum()
            correct = attribute_logits.argmax(1)[on_object] == labels[slot][on_object]
            accuracy[f"{name}_s{4 * 2**stage}"] = correct.float().mean().item() if correct.numel() else float("nan")
    return loss, accuracy


def _batches(config: BackbonePretrainingConfig) -> Iterator[tuple[Tensor, Tensor]]:
    """(frames float32 [N, 3, H, W], labels int64 [3, N, H/4, W/4]) per step, N = clips x frames."""
    scene = SceneConfig(num_frames=config.num_frames, size=tuple(config.size))
    offset = _LABEL_STRIDE // 2  # the centre pixel of each 4 x 4 cell
    for step in range(config.steps):
        clips = [
            generate_clip(np.random.SeedSequence(config.seed, spawn_key=(step, i)), scene)
            for i in range(config.clips_per_step)
        ]
        frames = torch.cat([normalize_frames(c.frames) for c in clips])
        labels = np.concatenate([attribute_labels(c) for c in clips], axis=1)
        yield frames, torch.from_numpy(np.ascontiguousarray(labels[:, :, offset::_LABEL_STRIDE, offset::_LABEL_STRIDE]))


def pretrain_backbone(
    model_config: BifitConfig,
    config: BackbonePretrainingConfig | None = None,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, float, dict[str, float]], None] | None = None,
) -> dict[str, Tensor]:
    """Pretrain the backbone that `model_config` describes on synthetic attribute labels.

    Args:
        model_config: the referring model's config (its `backbone` and `backbone_norm`); the stem is
            trained too, whatever `train_backbone_stem` says, since nothing else would initialise it.
        config: the pretraining schedule (defaults: :class:`BackbonePretrainingConfig`).
        device: where to train (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`).
        on_step: called after every step with ``(step, loss, accuracy)`` (1-based step).

    Returns:
        The backbone's state dict in torchvision's key format (``conv1.weight``, ``layer1.0...``),
        on the CPU, ready for :func:`bifit.modeling.checkpoint.load_backbone_weights`.
    """
    config = BackbonePretrainingConfig() if config is None else config
    device = resolve_device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        backbone = ResNetBackbone(model_config.backbone, norm=model_config.backbone_norm, train_stem=True)
        with torch.no_grad():
            channels = [m.shape[1] for m in backbone(torch.zeros(1, 3, 64, 64))]
        heads = AttributeHeads(channels)
    backbone.to(device).train()
    heads.to(device).train()
    params = [p for p in [*backbone.parameters(), *heads.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    for step, (frames, labels) in enumerate(_batches(config), start=1):
        frames, labels = frames.to(device), labels.to(device)
        logits = heads(backbone(frames), tuple(labels.shape[-2:]))
        loss, accuracy = attribute_loss(logits, labels, config.background_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        if on_step is not None:
            on_step(step, loss.item(), accuracy)
    return {k: v.detach().cpu() for k, v in backbone.body.state_dict().items()}

