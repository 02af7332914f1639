"""ResNet backbone with frozen batch norm, returning the four residual stages."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import FrozenBatchNorm2d

from .chunks import in_chunks

__all__ = ["FrozenBatchNorm2d", "ResNetBackbone", "conv_norm", "downsample_mask"]


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor, fold: bool = True) -> torch.Tensor:
    """`norm(conv(x))`; with `fold`, a frozen batch norm is folded into the convolution's weights instead.

    Frozen statistics make the norm a fixed per-channel affine map, so one convolution with
    weights scaled per output channel gives the same result (up to float rounding) without the
    pass over the activations; gradients reach the convolution's own weights through the scaling.
    """
    if not fold or not isinstance(norm, FrozenBatchNorm2d):
        return norm(conv(x))
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
    return F.conv2d(x, weight, bias.to(conv.weight.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)


def _residual_block(block: nn.Module, x: torch.Tensor, fold: bool) -> torch.Tensor:
    """A torchvision `Bottleneck` or `BasicBlock` (same modules and weights), its norms folded if `fold`."""
    convs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    if hasattr(block, "conv3"):
        convs.append((block.conv3, block.bn3))
    out = x
    for i, (conv, norm) in enumerate(convs):
        out = conv_norm(conv, norm, out, fold)
        if i < len(convs) - 1:
            out = out.relu_()
    identity = x if block.downsample is None else conv_norm(block.downsample[0], block.downsample[1], x, fold)
    return out.add_(identity).relu_()


def downsample_mask(mask: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Resize a padding mask [N, H, W] (True = padding) with legacy nearest interpolation."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]


def _group_norm(num_channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, num_channels)


class ResNetBackbone(nn.Module):
    """torchvision ResNet (no pretrained download) returning layer1..layer4 (strides 4, 8, 16, 32).

    Args:
        name: torchvision ResNet name.
        norm: "frozen_bn" (the official choice, for ImageNet-initialised weights) or "group_norm"
            (trainable; a backbone trained from scratch has no statistics to freeze).
        train_stem: also train conv1, bn1 and layer1; the official code trains only layer2..layer4.

    `fold_frozen_norms` (off by default; fast inference turns it on) folds frozen batch norms into the
    convolutions: 0.86x the backbone's time, but the rounding differs from the official norm-after-
    convolution by ~1e-6, enough to flip a pixel whose probability lies at the threshold.
    `channels_last` (off by default; fast inference turns it on) runs the convolutions on channels-last
    maps and returns the stages in that layout: bfloat16 convolutions then need no layout reorders
    (the backbone in bfloat16: 0.62x the time of contiguous maps on a 2-core AVX512-BF16 CPU).
    """

    def __init__(self, name: str = "resnet50", norm: str = "frozen_bn", train_stem: bool = False) -> None:
        super().__init__()
        norms = {"frozen_bn": FrozenBatchNorm2d, "group_norm": _group_norm}
        if norm not in norms:
            raise ValueError(f"backbone norm must be one of {sorted(norms)}, got {norm!r}")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norms[norm])
        self.body = nn.ModuleDict(
            {k: getattr(resnet, k) for k in ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4")}
        )
        self.fold_frozen_norms = False
        self.channels_last = False
        # Under autograd, keep only the inputs of the trained stages (layer2..layer4 as the official
        # code trains them) for the backward, frame chunk by frame chunk, and run them again in it
        # (see `BifitModel.set_activation_checkpointing`).
        self.activation_checkpointing = False
        for pname, param in self.body.named_parameters():
            if not train_stem and not pname.startswith(("layer2", "layer3", "layer4")):
                param.requires_grad_(False)

    # Frames per chunk: at most this many pixels when a stage runs in frame chunks (see `forward`).
    chunk_pixels = 360 * 640

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [N, 3, H, W] -> four maps [N, C_i, H / s_i, W / s_i] for s = 4, 8, 16, 32.

        A stage for which autograd records nothing (inference, or the frozen stem in training) runs a
        few frames at a time: a frame's activations stay in cache and only a chunk's intermediates are
        alive at once (at 6 x 360 x 640 the stem's maps are 88 MB each for the clip). A frame's result
        is the batch's up to the convolution algorithm's rounding (at 360 x 640 on a 2-core x86 CPU:
        bit for bit); one frame at a time measured 0.5-0.7x the time of the whole batch there.
        """
        body = self.body
        fold = self.fold_frozen_norms
        frames = max(1, self.chunk_pixels // (x.shape[-2] * x.shape[-1]))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def stem(z: torch.Tensor) -> torch.Tensor:
            z = body["maxpool"](conv_norm(body["conv1"], body["bn1"], z, fold).relu_())
            return _run_blocks(body["layer1"], z, fold)

        recompute = self.activation_checkpointing
        x = _in_frame_chunks(stem, x, frames, recompute, body["conv1"], body["bn1"], body["layer1"])
        outs = [x]
        for stage in ("layer2", "layer3", "layer4"):
            x = _in_frame_chunks(lambda z, s=stage: _run_blocks(body[s], z, fold), x, frames, recompute, body[stage])
            outs.append(x)
        return outs


def _in_frame_chunks(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, frames: int, recompute: bool, *modules: nn.Module
) -> torch.Tensor:
    """`fn(x)` for x [N, ...], `frames` frames at a time when autograd would record nothing for `modules`
    or, with `recompute`, checkpointed chunk by chunk (each chunk computed again in the backward)."""
    records = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())
    )
    if records and recompute:
        return in_chunks(lambda s: checkpoint(fn, x[s], use_reentrant=False), x.shape[0], frames)
    return in_chunks(lambda s: fn(x[s]), x.shape[0], x.shape[0] if records else frames)


def _run_blocks(blocks: nn.Module, x: torch.Tensor, fold: bool) -> torch.Tensor:
    for block in blocks:
        x = _residual_block(block, x, fold)
    return x
