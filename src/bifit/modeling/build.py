"""Build a randomly initialised model from a configuration."""

from __future__ import annotations

from ..config import BifitConfig, get_preset
from .bifit import BifitModel
from .text_encoder import TextEncoder

__all__ = ["build_model"]


def build_model(config: BifitConfig | str = "bifit_r50", text_encoder: str | None = None) -> BifitModel:
    """A randomly initialised BIFIT (backbone weights are not downloaded).

    Args:
        config: a `BifitConfig` or a preset name.
        text_encoder: Hugging Face id or local directory of a pretrained text encoder; defaults to the
            config's `text_encoder`.
    """
    if isinstance(config, str):
        config = get_preset(config)
    source = text_encoder or config.text_encoder
    if text_encoder is not None:
        config = config.replace(text_encoder=str(text_encoder))
    return BifitModel(config, TextEncoder.from_pretrained(source))
