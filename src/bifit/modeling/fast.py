"""Fast inference: matrix products and convolutions in bfloat16 where the hardware computes them
natively (opt-in; outputs differ slightly from the exact float32 path).

The parts whose errors grow with coordinates stay in float32: the deformable attention's sampling
offsets (a bfloat16 offset of 40 px is off by 0.1 px) and the dynamic mask head (its relative
coordinates reach hundreds of pixels).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .bifit import BifitModel

__all__ = ["fast_inference_dtype", "prepare_fast_inference"]


def _cpu_has_bfloat16() -> bool:
    """Native bfloat16 dot products (AVX512-BF16 or AMX); emulated bfloat16 is slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def fast_inference_dtype(device: torch.device | str) -> torch.dtype | None:
    """The reduced precision of fast inference on `device`, or None where it would not be faster."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_bfloat16():
        return torch.bfloat16
    return None


def prepare_fast_inference(model: BifitModel) -> BifitModel:
    """Switch `model` to fast inference on its current device (in place) and return it.

    Eval-mode forwards then run under `torch.autocast` with `fast_inference_dtype(model.device)`, and
    the backbone's frozen batch norms are folded into its convolutions, which run on channels-last maps;
    training is unaffected. Set `model.autocast_dtype = None`, `model.backbone.fold_frozen_norms = False`
    and `model.backbone.channels_last = False` to return to the exact path.

    Raises:
        ValueError: the device has no native reduced-precision arithmetic (fast mode would be slower).
    """
    dtype = fast_inference_dtype(model.device)
    if dtype is None:
        raise ValueError(
            f"fast inference needs native bfloat16 arithmetic (a CPU with AVX512-BF16 or AMX, or a CUDA GPU); "
            f"{model.device} has none, so run without fast mode"
        )
    model.autocast_dtype = dtype
    model.backbone.fold_frozen_norms = True
    model.backbone.channels_last = True
    return model.eval()
