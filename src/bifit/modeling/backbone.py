"""ResNet backbone with frozen batch norm, returning the four residual stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

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
        for pname, param in self.body.named_parameters():
            if not train_stem and not pname.startswith(("layer2", "layer3", "layer4")):
                param.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [N, 3, H, W] -> four maps [N, C_i, H / s_i, W / s_i] for s = 4, 8, 16, 32."""
        body = self.body
        fold = self.fold_frozen_norms
        x = body["maxpool"](conv_norm(body["conv1"], body["bn1"], x, fold).relu_())
        outs = []
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for block in body[stage]:
                x = _residual_block(block, x, fold)
            outs.append(x)
        return outs
