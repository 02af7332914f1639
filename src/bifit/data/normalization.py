"""ImageNet normalisation of uint8 frames, shared by the datasets, the training transforms and
inference (which imports it from here: the data layer does not reach up into inference)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_frames"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize_frames(frames: Tensor | np.ndarray) -> Tensor:
    """ImageNet-normalise uint8 frames, bit for bit as the official ``ToTensor`` then ``Normalize``.

    The float32 operations run in the official order, ``(x / 255 - mean) / std``: folding them
    into one multiply-add (``x * (1 / 255 / std) - mean / std``) rounds differently for most byte
    values (by up to 7e-7), enough to flip mask pixels whose probability lies that close to 0.5.

    Args:
        frames: uint8 [T, H, W, 3] (RGB), tensor or array.

    Returns:
        float32 [T, 3, H, W].
    """
    pixels = frames.detach().cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}")
    video = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return video.div_(255).sub_(mean).div_(std)
