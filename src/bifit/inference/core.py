"""The clip core: what every inference path does between uint8 frames and masks, in one place.

After SAM 2's split (``sam2/utils/transforms.py`` owns resizing, normalisation and postprocessing;
its predictors only orchestrate), the `Segmenter`, the benchmark protocols (Ref-YouTube-VOS,
Ref-DAVIS17, A2D/JHMDB), the web app and the demo (through the `Segmenter`) and the benchmark
scripts call these functions instead of each keeping a copy:

- preprocessing (:func:`preprocess_frames`, :func:`load_frames`): the official resize (shorter side to
  360 with PIL bilinear, longer side truncated as ``torchvision.transforms.Resize(360)``, optionally
  capped as the A2D/JHMDB evaluation does) and ImageNet normalisation (:func:`normalize_frames`,
  bit for bit ``ToTensor`` then ``Normalize``; it lives in `bifit.data.normalization`, below both
  this module and the training pipelines, which use it too);
- one clip for several expressions (:func:`segment_clip`): the backbone runs once, the model decodes
  the expressions on its shared features, at most ``expressions_per_pass`` per call (the official
  scripts re-read the frames and re-run the backbone per expression; the outputs are the same);
- query selection, the official rule: per expression the query slot with the best mean over frames
  of sigmoid(logit) (max over classes). :func:`select_queries` applies it to one clip (the "clip"
  rule of the official Ref-DAVIS script); :class:`QueryVote` applies it to all clips of a video at
  once (the "video" rule, the official Ref-YouTube-VOS rule when the video is one clip);
- postprocessing (:func:`upsample_logits`, :func:`masks_from_logits`, :func:`boxes_to_pixels`):
  stride-4 mask logits resized bilinearly (align_corners False), sigmoid > threshold; boxes from
  normalised (cx, cy, w, h) to pixel (x1, y1, x2, y2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from bifit.data.frame_sizes import EVAL_SHORT_SIZE, MAX_LONG_SIDE, FrameSizeError, model_input_hw
from bifit.data.normalization import IMAGENET_MEAN, IMAGENET_STD, normalize_frames
from bifit.data.video import open_rgb

if TYPE_CHECKING:
    from bifit.modeling.bifit import BifitModel

__all__ = [
    "EVAL_SHORT_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MASK_THRESHOLD",
    "MAX_LONG_SIDE",
    "ClipPrediction",
    "QuerySelection",
    "QueryVote",
    "boxes_to_pixels",
    "check_count",
    "load_frames",
    "masks_from_logits",
    "normalize_frames",
    "preprocess_frames",
    "segment_clip",
    "select_queries",
    "upsample_logits",
]

#: Threshold on the mask probability (official ``--threshold`` default).
MASK_THRESHOLD = 0.5

QuerySelection = Literal["video", "clip"]


# ---------------------------------------------------------------------------------------- checks
def check_count(value: int | None, name: str) -> int | None:
    """`value` if it is None (no cut: the whole video as one clip, all expressions in one pass) or at
    least 1; the one check of `clip_length` and `expressions_per_pass`, wherever they come from.

    Raises:
        ValueError: naming `name` (the argument or command-line flag the value came from).
    """
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------- preprocessing
def preprocess_frames(
    frames: np.ndarray,
    short_side: int | None = EVAL_SHORT_SIZE,
    max_long_side: int | None = MAX_LONG_SIDE,
    max_size: int | None = None,
) -> Tensor:
    """The model input of a clip: uint8 [t, H, W, 3] -> float32 [t, 3, h, w], resized and normalised.

    Args:
        frames: uint8 RGB frames of one size.
        short_side: resize so that the shorter side has this length (PIL bilinear, longer side
            truncated); None keeps the frames' size.
        max_long_side: refuse frames whose resized longer side exceeds this (None: no limit); it never
            changes a result, see :func:`bifit.data.frame_sizes.model_input_hw`.
        max_size: cap on the resized longer side (None: no cap, as the Ref-YTVOS/DAVIS scripts).

    Raises:
        FrameSizeError: the limit is exceeded.
    """
    height, width = frames.shape[1:3]
    out_h, out_w = model_input_hw(height, width, short_side, max_long_side, max_size)
    if (out_h, out_w) != (height, width):
        frames = np.stack([np.asarray(_resize(Image.fromarray(f), out_h, out_w)) for f in frames])
    return normalize_frames(frames)


def _resize(image: Image.Image, height: int, width: int) -> Image.Image:
    return image.resize((width, height), Image.Resampling.BILINEAR)


def load_frames(
    paths: Sequence[Path],
    short_side: int = EVAL_SHORT_SIZE,
    max_size: int | None = None,
    max_long_side: int | None = MAX_LONG_SIDE,
) -> tuple[Tensor, tuple[int, int]]:
    """Read and preprocess the frame files of one clip as the official inference does.

    Args:
        paths: image files of the clip, in order; all of the same size.
        short_side, max_size, max_long_side: as :func:`preprocess_frames`.

    Returns:
        ``(video, (H, W))``: float32 [T, 3, h, w] ImageNet-normalised and the original size.

    Raises:
        FrameSizeError: naming the first frame, when the limit is exceeded.
    """
    if not paths:
        raise ValueError("a clip needs at least one frame")
    images = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"frame not found: {path}")
        images.append(open_rgb(path))
    width, height = images[0].size
    for path, img in zip(paths, images, strict=True):
        if img.size != (width, height):
            raise ValueError(f"frame {path} is {img.size[0]}x{img.size[1]}, the clip's first is {width}x{height}")
    try:
        out_h, out_w = model_input_hw(height, width, short_side, max_long_side, max_size)
    except FrameSizeError as exc:
        raise FrameSizeError(f"{paths[0]}: {exc}") from None
    # PIL images are resized as read, without a round trip through arrays.
    resized = np.stack([np.asarray(_resize(img, out_h, out_w)) for img in images])
    return normalize_frames(resized), (height, width)


# ---------------------------------------------------------------------------------------- one clip
@dataclass
class ClipPrediction:
    """Predictions of E expressions over one clip of t frames (tensors on the model's device).

    Attributes:
        logits: [E, t, Q, K] class logits.
        boxes: [E, t, Q, 4] boxes, normalised (cx, cy, w, h) of the model input.
        queries: [E] the query chosen per expression by the clip rule (:func:`select_queries`).
        mask_logits: [E, t, h4, w4] stride-4 mask logits of the chosen query.
        all_mask_logits: [E, t, Q, h4, w4] those of every query, when `segment_clip` was asked to keep
            them (to choose the query over several clips later); else None.
    """

    logits: Tensor
    boxes: Tensor
    queries: Tensor
    mask_logits: Tensor
    all_mask_logits: Tensor | None = None


@torch.inference_mode()
def segment_clip(
    model: BifitModel,
    video: Tensor,
    expressions: Sequence[str],
    expressions_per_pass: int | None = None,
    keep_all_queries: bool = False,
) -> ClipPrediction:
    """One backbone pass over `video`, decoded for every expression.

    Args:
        model: the model (in eval mode).
        video: float32 [t, 3, h, w] ImageNet-normalised (:func:`preprocess_frames`), on any device
            (moved to the model's). As one video of a batch of one, it is its own padded canvas.
        expressions: the E expressions, used as written (the official inference does not clean them).
        expressions_per_pass: at most this many expressions per decode call (the model decodes them one
            at a time; this bounds the outputs held per call; the backbone still runs once). None: one call.
        keep_all_queries: also return the mask logits of every query (`all_mask_logits`).

    Returns:
        A :class:`ClipPrediction`.
    """
    if not expressions:
        raise ValueError("at least one expression is needed")
    step = check_count(expressions_per_pass, "expressions_per_pass") or len(expressions)
    visual = model.encode_video([video.to(model.device)])
    logits, boxes, masks, all_masks = [], [], [], []
    for start in range(0, len(expressions), step):
        chunk = list(expressions[start : start + step])
        out = model.predict_from_features(visual, chunk, caption_videos=[0] * len(chunk))
        chosen = select_queries(out["pred_logits"])[:, None]
        rows = torch.arange(len(chunk), device=chosen.device)[:, None]
        frames = torch.arange(out["pred_logits"].shape[1], device=chosen.device)
        logits.append(out["pred_logits"])
        boxes.append(out["pred_boxes"])
        masks.append(out["pred_masks"][rows, frames, chosen])  # [n, t, h4, w4]
        if keep_all_queries:
            all_masks.append(out["pred_masks"])
    all_logits = torch.cat(logits)
    return ClipPrediction(
        logits=all_logits,
        boxes=torch.cat(boxes),
        queries=select_queries(all_logits),
        mask_logits=torch.cat(masks),
        all_mask_logits=torch.cat(all_masks) if keep_all_queries else None,
    )


# ---------------------------------------------------------------------------------------- queries
def select_queries(logits: Tensor) -> Tensor:
    """The official query choice per expression over one clip (the "clip" rule).

    Args:
        logits: [E, T, Q, K] class logits of E expressions over a clip of T frames.

    Returns:
        [E] int64: per expression, argmax over q of max over k of the mean over frames of
        sigmoid(logit) (the first query on ties).
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [E, T, Q, K], got {list(logits.shape)}")
    return logits.sigmoid().mean(1).max(-1).values.argmax(-1)


class QueryVote:
    """The official query choice over all clips of a video (the "video" rule).

    The per-query sums of sigmoid scores are accumulated clip by clip and ONE query per expression is
    picked from their mean over all frames. This is meaningful because a query slot is the same
    learned embedding (query position and initial reference point) in every frame and every clip,
    and training matches one slot to the object for all frames of a clip.
    """

    def __init__(self) -> None:
        self._sums: Tensor | None = None
        self.num_frames = 0

    def add(self, logits: Tensor) -> None:
        """Count one clip's class logits [E, t, Q, K]."""
        clip_sum = logits.sigmoid().sum(1)
        self._sums = clip_sum if self._sums is None else self._sums + clip_sum
        self.num_frames += logits.shape[1]

    def scores(self) -> Tensor:
        """[E, Q]: per query, the max over classes of the mean over all frames of sigmoid(logit)."""
        if self._sums is None:
            raise ValueError("no clip counted yet")
        return (self._sums / self.num_frames).max(-1).values

    def select(self) -> Tensor:
        """[E] int64: the query slot with the best score (the first on ties)."""
        return self.scores().argmax(-1)


# ---------------------------------------------------------------------------------------- postprocessing
def upsample_logits(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners False) resize of [N, h, w] (or [B, N, h, w]) logits to `size`.

    The official Ref-YTVOS/DAVIS scripts resize the whole stride-4 map straight to the original
    frame size (the map covers the input rounded up to a multiple of 4; no crop first); the A2D
    evaluation resizes it x4 to the padded canvas.
    """
    squeeze = mask_logits.dim() == 3
    batch = mask_logits[None] if squeeze else mask_logits
    out = F.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False)
    return out[0] if squeeze else out


def masks_from_logits(mask_logits: Tensor, size: tuple[int, int], threshold: float = MASK_THRESHOLD) -> Tensor:
    """Binary masks: :func:`upsample_logits` to `size`, then sigmoid > `threshold` (bool, same layout)."""
    return upsample_logits(mask_logits, size).sigmoid() > threshold


def boxes_to_pixels(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalised (cx, cy, w, h) boxes [..., 4] -> float32 (x1, y1, x2, y2) in pixels of a (H, W) frame."""
    height, width = size
    cx, cy, w, h = np.moveaxis(boxes.astype(np.float32), -1, 0)
    xyxy = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
    return xyxy * np.array([width, height, width, height], dtype=np.float32)
