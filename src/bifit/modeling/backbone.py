"""ResNet backbone with frozen batch norm, returning the four residual stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = ["FrozenBatchNorm2d", "ResNetBackbone", "downsample_mask"]


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (eps 1e-5, as the official code)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # torchvision checkpoints carry a batch counter that frozen statistics have no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


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
    """

    def __init__(self, name: str = "resnet50", norm: str = "frozen_bn", train_stem: bool = False) -> None:
        super().__init__()
        norms = {"frozen_bn": FrozenBatchNorm2d, "group_norm": _group_norm}
        if norm not in norms:
            raise ValueError(f"backbone norm must be one of {sorted(norms)}, got {norm!r}")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norms[norm])
        self.body = nn.ModuleDict(
            {k: getattr(resnet, k) for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")}
        )
        for pname, param in self.body.named_parameters():
            if not train_stem and not pname.startswith(("layer2", "layer3", "layer4")):
                param.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [N, 3, H, W] -> four maps [N, C_i, H / s_i, W / s_i] for s = 4, 8, 16, 32."""
        body = self.body
        x = body["maxpool"](body["relu"](body["bn1"](body["conv1"](x))))
        outs = []
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            x = body[stage](x)
            outs.append(x)
        return outs
