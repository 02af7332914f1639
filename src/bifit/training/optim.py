"""The official optimiser: AdamW over five parameter groups, and MultiStepLR stepped per epoch.

The official code picks groups by substrings of its parameter names (`backbone.0`,
`text_encoder`, `text_fusion_module`, `reference_points`/`sampling_offsets`); our modules carry
other names, so the same groups are picked by ours:

=================  ==========================================  ===========================
group              our parameters                              learning rate
=================  ==========================================  ===========================
``main``           everything else                             ``lr``
``backbone``       ``backbone.*``                              ``lr_backbone``
``text_encoder``   ``text_encoder.*`` (empty when frozen)      ``lr_text_encoder``
``text_fusion``    ``bvli.text_from_vision.*``                 ``lr_text_fusion``
``linear_proj``    ``*sampling_offsets*``, ``*reference_points*``  ``lr * lr_linear_proj_mult``
=================  ==========================================  ===========================

Frozen parameters (`requires_grad=False`) are left out, as officially.
"""

from __future__ import annotations

from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import MultiStepLR

from .config import TrainingConfig

__all__ = ["GROUP_NAMES", "build_optimizer", "build_scheduler", "parameter_group_of", "parameter_groups"]

GROUP_NAMES = ("main", "backbone", "text_encoder", "text_fusion", "linear_proj")
_LINEAR_PROJ_KEYWORDS = ("sampling_offsets", "reference_points")


def parameter_group_of(name: str) -> str:
    """The optimiser group of the parameter called `name` (a `BifitModel.named_parameters` name)."""
    if name.startswith("backbone."):
        return "backbone"
    if name.startswith("text_encoder."):
        return "text_encoder"
    if name.startswith("bvli.text_from_vision."):
        return "text_fusion"
    if any(keyword in name for keyword in _LINEAR_PROJ_KEYWORDS):
        return "linear_proj"
    return "main"


def parameter_groups(model: nn.Module, config: TrainingConfig) -> list[dict]:
    """AdamW parameter groups in the official order (main, backbone, text encoder, text fusion,
    linear projections); each dict has `name`, `params` and `lr`."""
    rates = {
        "main": config.lr,
        "backbone": config.lr_backbone,
        "text_encoder": config.lr_text_encoder,
        "text_fusion": config.lr_text_fusion,
        "linear_proj": config.lr * config.lr_linear_proj_mult,
    }
    params: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for name, param in model.named_parameters():
        if param.requires_grad:
            params[parameter_group_of(name)].append(param)
    return [{"name": name, "params": params[name], "lr": rates[name]} for name in GROUP_NAMES]


def build_optimizer(model: nn.Module, config: TrainingConfig) -> AdamW:
    """AdamW with the official groups and weight decay (see the module docstring).

    The update is the official one; where the parameters live on the CPU or a CUDA device it runs as
    torch's fused kernel, which on a small CPU model is about five times faster than the per-tensor loop
    (an eighth of a `synthetic_tiny` training step).
    """
    groups = parameter_groups(model, config)
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = bool(devices) and devices <= {"cpu", "cuda"}
    return AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps, fused=fused)


def build_scheduler(optimizer: Optimizer, config: TrainingConfig) -> MultiStepLR:
    """MultiStepLR multiplying every group's rate by `lr_gamma` after the epochs in `lr_drop`;
    the training loop steps it once per epoch."""
    return MultiStepLR(optimizer, milestones=list(config.lr_drop), gamma=config.lr_gamma)
