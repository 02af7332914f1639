"""bifit: BIFIT referring video object segmentation in pure PyTorch.

Public API::

    import bifit
    model = bifit.load_official_checkpoint("ytvos_r50.pth", text_encoder="roberta-base")
    outputs = model(videos, ["the man in the red shirt riding a bike"])
"""

from .config import BifitConfig, get_preset, preset_names
from .devices import resolve_device
from .modeling.bifit import BifitModel
from .modeling.checkpoint import (
    CheckpointError,
    load_model,
    load_official_checkpoint,
    load_pretrained,
    save_pretrained,
)
from .modeling.text_encoder import ExpressionError, TextEncoder
from .inference.predictor import ExpressionResult, SegmentationResult, Segmenter, default_checkpoint
from .outputs import OutputError

__version__ = "0.1.0"


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


__all__ = [
    "BifitConfig",
    "BifitModel",
    "CheckpointError",
    "ExpressionError",
    "ExpressionResult",
    "OutputError",
    "SegmentationResult",
    "Segmenter",
    "TextEncoder",
    "build_model",
    "default_checkpoint",
    "get_preset",
    "load_model",
    "load_official_checkpoint",
    "load_pretrained",
    "preset_names",
    "resolve_device",
    "save_pretrained",
    "__version__",
]
