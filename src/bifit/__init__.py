"""bifit: BIFIT referring video object segmentation in pure PyTorch.

Public API::

    import bifit
    model = bifit.load_official_checkpoint("ytvos_r50.pth", text_encoder="roberta-base")
    outputs = model(videos, ["the man in the red shirt riding a bike"])

The names below are imported on first use, so that `import bifit` (and the `bifit` command's
`--help`) stays fast.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "BifitConfig": ".config",
    "get_preset": ".config",
    "preset_names": ".config",
    "resolve_device": ".devices",
    "BifitModel": ".modeling.bifit",
    "build_model": ".modeling.build",
    "CheckpointError": ".modeling.checkpoint",
    "load_model": ".modeling.checkpoint",
    "load_official_checkpoint": ".modeling.checkpoint",
    "load_pretrained": ".modeling.checkpoint",
    "save_pretrained": ".modeling.checkpoint",
    "ExpressionError": ".modeling.text_encoder",
    "TextEncoder": ".modeling.text_encoder",
    "ExpressionResult": ".inference.results",
    "SegmentationResult": ".inference.results",
    "Segmenter": ".inference.predictor",
    "default_checkpoint": ".assets",
    "OutputError": ".outputs",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:
    from .config import BifitConfig, get_preset, preset_names
    from .devices import resolve_device
    from .assets import default_checkpoint
    from .inference.predictor import Segmenter
    from .inference.results import ExpressionResult, SegmentationResult
    from .modeling.bifit import BifitModel
    from .modeling.build import build_model
    from .modeling.checkpoint import CheckpointError, load_model, load_official_checkpoint, load_pretrained, save_pretrained
    from .modeling.text_encoder import ExpressionError, TextEncoder
    from .outputs import OutputError
