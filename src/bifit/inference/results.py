"""What the `Segmenter` hands back: per-expression results of a whole video, per-frame results, and
the lazily postprocessed pass over a video they come from.

Masks are made only when asked for: after the model's pass, `VideoSegmentation` holds the small
per-frame data (class logits and boxes of every query) in memory and the stride-4 mask logits of
all queries in a `LogitStore` (in memory, or spilled to a temporary directory so that memory stays
flat on long videos); iterating reads the frames again, clip by clip, and postprocesses the chosen
query of each expression with the clip core (:mod:`bifit.inference.core`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.video import FrameSource
from ..outputs import writing
from .core import boxes_to_pixels, masks_from_logits

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

__all__ = ["ExpressionResult", "FrameResult", "LogitStore", "SegmentationResult", "VideoSegmentation"]


@dataclass(kw_only=True)
class ExpressionResult:
    """What one expression refers to in every processed frame.

    Attributes:
        expression: the referring expression.
        masks: bool [T, H, W] at the original frame size.
        scores: float32 [T], sigmoid of the chosen query's logit in each frame.
        boxes: float32 [T, 4], (x1, y1, x2, y2) in pixels of the original frame.
        queries: int64 [T], the query slot used in each frame (one value for the whole video unless
            `query_selection="clip"`).
    """

    expression: str
    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    queries: np.ndarray

    @property
    def query(self) -> int:
        """The query slot of the first frame (the only one with `query_selection="video"`)."""
        return int(self.queries[0])


@dataclass(kw_only=True)
class SegmentationResult:
    """All expressions of one video. Indexing and iterating give the `ExpressionResult`s.

    Attributes:
        expressions: one result per expression, in the order given.
        frame_names: T names (file stems for folders, `00000`, ... = frame index for video files).
        fps: frames per second of the processed frames (stride applied), None for folders/images.
    """

    expressions: list[ExpressionResult]
    frame_names: list[str]
    fps: float | None

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, index: int) -> ExpressionResult:
        return self.expressions[index]

    def __iter__(self) -> Iterator[ExpressionResult]:
        return iter(self.expressions)


@dataclass(kw_only=True)
class FrameResult:
    """All expressions in one frame, as `VideoSegmentation` hands them out.

    Attributes:
        index: position among the processed frames.
        name: the frame's name.
        frame: uint8 [H, W, 3], the original RGB frame.
        masks: bool [E, H, W]; scores float32 [E]; boxes float32 [E, 4] (x1, y1, x2, y2 pixels);
        queries: int64 [E], the query slot used for each expression.
    """

    index: int
    name: str
    frame: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    queries: np.ndarray


class LogitStore:
    """Per-clip arrays kept in memory, or spilled to a temporary directory to keep memory flat."""

    def __init__(self, spill: bool) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="bifit-logits-") if spill else None
        self._memory: list[np.ndarray] = []
        self._count = 0

    def append(self, array: np.ndarray) -> None:
        if self._tmp is None:
            self._memory.append(array)
        else:
            path = os.path.join(self._tmp.name, f"{self._count}.npy")
            with writing(path, "write temporary mask logits to"):
                np.save(path, array)
        self._count += 1

    def __getitem__(self, i: int) -> np.ndarray:
        if self._tmp is None:
            return self._memory[i]
        path = os.path.join(self._tmp.name, f"{i}.npy")
        with writing(path, "read temporary mask logits from"):
            return np.load(path)

    def close(self) -> None:
        self._memory = []
        if self._tmp is not None:
            self._tmp.cleanup()


@dataclass(kw_only=True, eq=False)
class VideoSegmentation:
    """The model's pass over a video is done; iterate to get a `FrameResult` per frame.

    Only small per-frame data (logits and boxes of every query) are kept in memory; frames and
    masks are produced one at a time while iterating, so a caller that writes them out as they come
    keeps memory flat. Iterate once; `close()` (or leaving a `with` block) deletes temporary files.

    Attributes:
        source: the video's frames, read again clip by clip while iterating.
        clip_length: frames per clip of the pass (None: the whole video was one clip).
        expressions: the E expressions.
        frame_size: (H, W) of the original frames.
        logits: float32 [E, T, Q, K] class logits of every query.
        boxes: float32 [E, T, Q, 4] normalised (cx, cy, w, h) boxes of every query.
        mask_logits: per clip, float32 [E, t, Q, h/4, w/4] stride-4 mask logits of every query.
        queries: int64 [E, T], the query slot chosen for every expression and frame.
        query_scores: float32 [E, Q], mean over all frames of each query's score (what picks it).
        threshold: mask probability threshold.
        fps: frames per second of the processed frames, None when unknown.
    """

    source: FrameSource
    clip_length: int | None
    expressions: list[str]
    frame_size: tuple[int, int]
    logits: np.ndarray
    boxes: np.ndarray
    mask_logits: LogitStore = field(repr=False)
    queries: np.ndarray
    query_scores: np.ndarray
    threshold: float
    fps: float | None

    @property
    def num_frames(self) -> int:
        """T, the number of processed frames."""
        return self.logits.shape[1]

    def __iter__(self) -> Iterator[FrameResult]:
        e_idx = np.arange(len(self.expressions))
        t = 0
        try:
            for clip_idx, (frames, names) in enumerate(self.source.clips(self.clip_length)):
                clip_masks = self.mask_logits[clip_idx]  # [E, t, Q, h/4, w/4]
                for j in range(len(names)):
                    if t >= self.num_frames:
                        raise RuntimeError(f"the video yielded more frames on its second read than the {self.num_frames} segmented")
                    q = self.queries[:, t]
                    chosen = torch.from_numpy(np.ascontiguousarray(clip_masks[e_idx, j, q]))
                    scores = 1.0 / (1.0 + np.exp(-self.logits[e_idx, t, q].astype(np.float64)))
                    yield FrameResult(
                        index=t,
                        name=names[j],
                        frame=frames[j],
                        masks=masks_from_logits(chosen, self.frame_size, self.threshold).numpy(),
                        scores=scores.max(-1).astype(np.float32),
                        boxes=boxes_to_pixels(self.boxes[e_idx, t, q], self.frame_size),
                        queries=q.copy(),
                    )
                    t += 1
        finally:
            self.close()
        if t != self.num_frames:
            raise RuntimeError(f"the video yielded {t} frames on its second read, {self.num_frames} the first time")

    def collect(self) -> SegmentationResult:
        """Everything in memory: bool masks [T, H, W] per expression (memory grows with T)."""
        e, t = len(self.expressions), self.num_frames
        h, w = self.frame_size
        masks = np.zeros((e, t, h, w), dtype=bool)
        scores = np.zeros((e, t), dtype=np.float32)
        boxes = np.zeros((e, t, 4), dtype=np.float32)
        names: list[str] = []
        for frame in self:
            masks[:, frame.index], scores[:, frame.index], boxes[:, frame.index] = frame.masks, frame.scores, frame.boxes
            names.append(frame.name)
        results = [
            ExpressionResult(expression=text, masks=masks[i], scores=scores[i], boxes=boxes[i],
                             queries=self.queries[i].copy())
            for i, text in enumerate(self.expressions)
        ]
        return SegmentationResult(expressions=results, frame_names=names, fps=self.fps)

    def close(self) -> None:
        self.mask_logits.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
