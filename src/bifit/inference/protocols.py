"""What the benchmark prediction protocols (Ref-YouTube-VOS, Ref-DAVIS17, A2D/JHMDB) share beyond
the clip core (:mod:`bifit.inference.core`: reading, resizing and normalising frames, one backbone
pass for all expressions, query selection, upsampling):

- :func:`clip_ranges` cuts a video into the clips of a protocol, :func:`predict_clips` predicts
  them for all expressions of a Ref-YouTube-VOS / Ref-DAVIS17 video;
- :func:`save_mask_png`, :func:`save_palette_png` and :func:`davis_palette` write the official
  output PNGs;
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
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch.distributed as dist
from PIL import Image

from bifit.inference.core import (
    EVAL_SHORT_SIZE,
    MAX_LONG_SIDE,
    ClipPrediction,
    check_count,
    load_frames,
    segment_clip,
)
from bifit.outputs import writing

if TYPE_CHECKING:
    from bifit.data.ytvos import EvalVideo
    from bifit.modeling.bifit import BifitModel

__all__ = [
    "Shard",
    "clip_ranges",
    "davis_palette",
    "distributed_shard",
    "predict_clips",
    "save_mask_png",
    "save_palette_png",
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


def clip_ranges(num_frames: int, clip_length: int | None) -> list[range]:
    """Consecutive clips covering ``num_frames`` frames; ``None`` means one clip (the whole video)."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if clip_length is None:
        return [range(num_frames)]
    check_count(clip_length, "clip_length")
    return [range(s, min(s + clip_length, num_frames)) for s in range(0, num_frames, clip_length)]


def predict_clips(
    model: BifitModel,
    video: EvalVideo,
    *,
    short_side: int = EVAL_SHORT_SIZE,
    clip_length: int | None = None,
    expressions_per_pass: int | None = None,
    max_long_side: int | None = MAX_LONG_SIDE,
) -> Iterator[tuple[range, tuple[int, int], ClipPrediction]]:
    """The clips of one benchmark video, each read and predicted for all the video's expressions.

    Args:
        model: the model in eval mode.
        video: a Ref-YouTube-VOS / Ref-DAVIS17 video with its frame files and expressions.
        short_side: shorter side of the model input (official 360).
        clip_length: frames per clip; None = the whole video.
        expressions_per_pass: expressions decoded at once on the shared backbone features.
        max_long_side: refuse frames whose resized longer side exceeds this many pixels (None: no
            limit; never changes a result).

    Yields:
        ``(frame indices of the clip, (H, W) of the original frames, prediction)``, the prediction's
        tensors [E, t, ...] on the model's device (:func:`bifit.inference.core.segment_clip`).
    """
    captions = [e.text for e in video.expressions]
    for clip in clip_ranges(len(video.frame_names), clip_length):
        frames, size = load_frames([video.frame_paths[t] for t in clip], short_side, max_long_side=max_long_side)
        yield clip, size, segment_clip(model, frames, captions, expressions_per_pass)


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
