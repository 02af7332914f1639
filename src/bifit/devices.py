"""The one place where a device name becomes a `torch.device`.

Every entry point (`bifit segment`, `demo`, `app`, `train`, `predict`, `pretrain-backbone`, the
`Segmenter`, the checkpoint loaders and the training loop) accepts the same names:

- `auto` (or None): the GPU `cuda:<local_rank>` when CUDA is available, else the CPU;
- `cpu`;
- `cuda`: the GPU `cuda:<local_rank>` (GPU 0 outside torchrun);
- `cuda:N`: GPU N, which must exist;
- `mps`: Apple's Metal GPU, where PyTorch supports it.

A name outside these, or a device this machine does not have, is a `ValueError` that says which.
"""

from __future__ import annotations

import re

import torch

__all__ = ["DEVICE_NAMES", "resolve_device"]

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def resolve_device(spec: str | torch.device | None = "auto", *, local_rank: int = 0) -> torch.device:
    """The device that `spec` names, checked to exist on this machine.

    Args:
        spec: `auto`, None (the same), `cpu`, `cuda`, `cuda:N`, `mps`, or a `torch.device` of one of
            these kinds. Case and surrounding spaces do not matter.
        local_rank: the GPU that `auto` and `cuda` mean (torchrun's `LOCAL_RANK`; 0 otherwise).
    Raises:
        ValueError: `spec` is no device name, or names a device this machine lacks.
    """
    if spec is None:
        name = "auto"
    elif isinstance(spec, torch.device):
        name = str(spec)
    elif isinstance(spec, str):
        name = spec.strip().lower()
    else:
        raise ValueError(f"a device must be a name ({DEVICE_NAMES}), got a {type(spec).__name__}")
    if name == "auto":
        return _cuda(local_rank, "auto") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        return _cuda(local_rank, name)
    match = _CUDA_INDEX.match(name)
    if match:
        return _cuda(int(match.group(1)), name)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' requested but this machine has no usable Apple Metal GPU; use --device cpu")
        return torch.device("mps")
    raise ValueError(f"unknown device {spec!r}: use {DEVICE_NAMES}")


def _cuda(index: int, requested: str) -> torch.device:
    if not torch.cuda.is_available():
        built = "a PyTorch built without CUDA" if torch.version.cuda is None else "no usable NVIDIA GPU"
        raise ValueError(f"device {requested!r} requested but this machine has {built}; use --device cpu or auto")
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"device {requested!r} means GPU {index}, but this machine has {count} (cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)
