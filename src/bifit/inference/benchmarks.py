"""Machinery shared by the benchmark prediction commands (Ref-YouTube-VOS, Ref-DAVIS17, A2D/JHMDB).

- Frames are read as the official inference scripts read them: RGB, shorter side resized to 360
  with PIL bilinear (``torchvision.transforms.Resize(360)``: no cap on the longer side for
  Ref-YouTube-VOS / Ref-DAVIS17; A2D/JHMDB cap it at 640), ImageNet-normalised.
- :func:`segment_clip` runs the backbone once for a clip and decodes every expression of the video
  on copies of those features (``VisualFeatures.repeat``), instead of re-reading the frames and
  re-running the backbone per expression as the official scripts do. The outputs are the same.
- Query selection is the official one: the query with the highest mean (over the clip's frames)
  sigmoid score.
- :class:`Shard` splits the work over the processes of a ``torchrun`` launch (``RANK`` /
  ``WORLD_SIZE``): rank r takes items ``r, r + world, ...``; every rank writes its own outputs into
  a shared folder and rank 0 waits at a barrier before merging or evaluating.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor

from bifit.data.frame_sizes import EVAL_SHORT_SIZE, MAX_LONG_SIDE, FrameSizeError, model_input_hw
from bifit.data.transforms import frames_to_tensor
from bifit.data.video import open_rgb
from bifit.modeling.bifit import BifitModel
from bifit.outputs import writing

__all__ = [
    "EVAL_SHORT_SIZE",
    "MAX_LONG_SIDE",
    "ClipPrediction",
    "Shard",
    "clip_ranges",
    "davis_palette",
    "distributed_shard",
    "load_frames",
    "save_mask_png",
    "save_palette_png",
    "segment_clip",
    "select_queries",
    "upsample_logits",
]

T = TypeVar("T")

#: How long the ranks that finished wait at the final barrier for the slowest one. A whole
#: benchmark can take hours on one GPU, far longer than torch's default collective timeout.
BARRIER_TIMEOUT = timedelta(hours=12)


def _single_process_barrier() -> None:
    """The barrier of a one-process run: nobody to wait for."""


@dataclass(frozen=True)
class Shard:
    """This process's part of a (possibly distributed) prediction run.

    Attributes:
        rank: index of this process, 0 .. world_size - 1.
        world_size: number of processes.
        barrier: blocks until every process has called it.
    """

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=_single_process_barrier, compare=False)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"invalid shard: rank {self.rank} of world size {self.world_size}")

    @property
    def is_main(self) -> bool:
        """Whether this process merges the outputs and runs the evaluation."""
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """This rank's items: ``items[rank::world_size]``."""
        return list(items[self.rank :: self.world_size])


@contextmanager
def distributed_shard() -> Iterator[Shard]:
    """The :class:`Shard` of this process, from the ``RANK`` / ``WORLD_SIZE`` variables torchrun sets.

    With more than one process a ``gloo`` process group is created for the barrier (and destroyed
    on exit) unless one exists already; CPU-only, so it works whatever the devices.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None
    if world_size == 1:
        yield Shard()
        return
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield Shard(dist.get_rank(), dist.get_world_size(), dist.barrier)
    finally:
        if created:
            dist.destroy_process_group()


def load_frames(
    paths: Sequence[Path],
    short_side: int = EVAL_SHORT_SIZE,
    max_size: int | None = None,
    max_long_side: int | None = MAX_LONG_SIDE,
) -> tuple[Tensor, tuple[int, int]]:
    """Read and resize the frames of one clip as the official inference does.

    Args:
        paths: image files of the clip, in order; all of the same size.
        short_side: target length of the shorter side (official: 360).
        max_size: cap on the longer side (``None``: no cap, as the Ref-YTVOS/DAVIS scripts).
        max_long_side: refuse frames whose resized longer side exceeds this (``None``: no limit); it
            never changes a result, see :func:`bifit.data.transforms.model_input_hw`.

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
    resized = [img.resize((out_w, out_h), Image.Resampling.BILINEAR) for img in images]
    return frames_to_tensor(resized), (height, width)


def clip_ranges(num_frames: int, clip_length: int | None) -> list[range]:
    """Consecutive clips covering ``num_frames`` frames; ``None`` means one clip (the whole video)."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if clip_length is None:
        return [range(num_frames)]
    if clip_length < 1:
        raise ValueError(f"clip length must be >= 1, got {clip_length}")
    return [range(s, min(s + clip_length, num_frames)) for s in range(0, num_frames, clip_length)]


def select_queries(logits: Tensor) -> Tensor:
    """The official query choice per expression.

    Args:
        logits: [E, T, Q, K] class logits of E expressions over a clip of T frames.

    Returns:
        [E] int64: per expression, argmax over q of max over k of the mean over frames of
        sigmoid(logit) (the first query on ties).
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [E, T, Q, K], got {list(logits.shape)}")
    return logits.sigmoid().mean(1).max(-1).values.argmax(-1)


@dataclass
class ClipPrediction:
    """Predictions of E expressions over one clip of T frames.

    logits: [E, T, Q, K] class logits.
    queries: [E] the selected query per expression (:func:`select_queries`).
    mask_logits: [E, T, h4, w4] mask logits of the selected query, at stride 4 of the input.
    """

    logits: Tensor
    queries: Tensor
    mask_logits: Tensor


@torch.inference_mode()
def segment_clip(
    model: BifitModel, video: Tensor, captions: Sequence[str], expressions_per_pass: int | None = None
) -> ClipPrediction:
    """One backbone pass over ``video``, decoded for every caption.

    Args:
        model: the model (in eval mode).
        video: float32 [T, 3, h, w] ImageNet-normalised, on any device (moved to the model's).
        captions: the E expressions, used as written (the official inference does not clean them).
        expressions_per_pass: decode at most this many expressions at once (bounds memory; the
            backbone still runs once). ``None``: all at once.

    Returns:
        A :class:`ClipPrediction` (tensors on the model's device).
    """
    if not captions:
        raise ValueError("at least one expression is needed")
    if expressions_per_pass is not None and expressions_per_pass < 1:
        raise ValueError(f"expressions_per_pass must be >= 1, got {expressions_per_pass}")
    step = expressions_per_pass or len(captions)
    visual = model.encode_video([video.to(model.device)])
    logits, masks = [], []
    for start in range(0, len(captions), step):
        chunk = list(captions[start : start + step])
        out = model.decode(visual.repeat(len(chunk)), chunk)
        chunk_logits = out["pred_logits"]
        chosen = select_queries(chunk_logits)[:, None]
        rows = torch.arange(len(chunk), device=chosen.device)[:, None]
        frames = torch.arange(chunk_logits.shape[1], device=chosen.device)
        logits.append(chunk_logits)
        masks.append(out["pred_masks"][rows, frames, chosen])  # [n, T, h4, w4]
    all_logits = torch.cat(logits)
    return ClipPrediction(all_logits, select_queries(all_logits), torch.cat(masks))


def upsample_logits(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (align_corners False) resize of [N, h, w] (or [B, N, h, w]) logits to ``size``.

    The official Ref-YTVOS/DAVIS scripts resize the whole stride-4 map straight to the original
    frame size (the map covers the input rounded up to a multiple of 4; no crop first).
    """
    squeeze = mask_logits.dim() == 3
    batch = mask_logits[None] if squeeze else mask_logits
    out = torch.nn.functional.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False)
    return out[0] if squeeze else out


def save_mask_png(mask: np.ndarray, path: Path) -> None:
    """A binary [H, W] mask as the official Ref-YTVOS PNG: mode ``L``, 0 / 255.

    Raises:
        OutputError: naming `path` (read-only or full location).
    """
    with writing(path):
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def davis_palette() -> list[int]:
    """The 256-colour palette of the DAVIS annotations (the PASCAL VOC colour map), flat RGB."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def save_palette_png(ids: np.ndarray, palette: Sequence[int], path: Path) -> None:
    """A uint8 [H, W] id map as a palette (mode ``P``) PNG, as the official DAVIS script writes."""
    # A uint8 array gives an "L" image; putpalette turns it into "P", as in the official script.
    img = Image.fromarray(ids.astype(np.uint8))
    img.putpalette(list(palette))
    with writing(path):
        img.save(path)
