"""Sine position encodings: 2-D for feature maps, 1-D for word sequences (official conventions)."""

from __future__ import annotations

import math

import torch


def _interleave_sin_cos(embed: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """[..., ] positions -> [..., num_feats] with sin on even and cos on odd features."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=embed.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = embed[..., None] / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_position_2d(mask: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """Normalised 2-D sine encoding of the valid area of each map.

    Args:
        mask: [N, H, W] bool, True on padding.
    Returns:
        [N, 2 * num_feats, H, W]: y features first, then x.
    """
    not_mask = ~mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    eps = 1e-6
    # The -0.5 offset puts positions at pixel centres (the 1-D text encoding has none).
    y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * (2 * math.pi)
    x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * (2 * math.pi)
    pos_y = _interleave_sin_cos(y_embed, num_feats, temperature)
    pos_x = _interleave_sin_cos(x_embed, num_feats, temperature)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def shared_sine_position_2d(mask: torch.Tensor, num_feats: int, dtype: torch.dtype) -> torch.Tensor:
    """`sine_position_2d(mask, num_feats)` in `dtype`; when every map has the same padding (all frames
    of one video, or of videos of one size) the encoding is computed once and expanded over N as a
    view: the full tensor at stride 4 of 6 x 360 x 640 frames is 88 MB of identical copies."""
    if mask.shape[0] > 1 and bool((mask == mask[:1]).all()):
        return sine_position_2d(mask[:1], num_feats).to(dtype).expand(mask.shape[0], -1, -1, -1)
    return sine_position_2d(mask, num_feats).to(dtype)


def sine_position_1d(mask: torch.Tensor, num_feats: int = 256, temperature: float = 10000.0) -> torch.Tensor:
    """Normalised 1-D sine encoding of word positions.

    Args:
        mask: [B, L] bool, True on padding tokens.
    Returns:
        [B, L, num_feats].
    """
    x_embed = (~mask).cumsum(1, dtype=torch.float32)
    x_embed = x_embed / (x_embed[:, -1:] + 1e-6) * (2 * math.pi)
    return _interleave_sin_cos(x_embed, num_feats, temperature)
