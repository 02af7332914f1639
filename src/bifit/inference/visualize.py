"""Overlays of segmentation results: masks blended and boxes drawn in one colour per expression,
written as an mp4 video (PyAV) and an animated GIF (Pillow)."""

from __future__ import annotations

import colorsys
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from ..outputs import output_error, writing

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

__all__ = ["GifWriter", "Mp4Writer", "color_palette", "overlay_masks", "write_gif", "write_mp4"]

# Distinct, readable colours for the first expressions (Sasha Trubetskoy's list, RGB).
_BASE_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (70, 240, 240), (245, 130, 48), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)


def color_palette(n: int) -> list[tuple[int, int, int]]:
    """`n` distinct RGB colours; beyond the fixed first ten, hues step by the golden ratio."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    colors = list(_BASE_COLORS[:n])
    for i in range(len(colors), n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def overlay_masks(
    frame: np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
    colors: Sequence[tuple[int, int, int]] | None = None,
    labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    box_width: int = 2,
) -> np.ndarray:
    """Draw every mask (blended) and box (outlined) on a copy of `frame`.

    Masks are blended in order, later ones on top, as `pixel * (1 - alpha) + color * alpha`
    truncated to uint8 (the official visualisation with alpha 0.5).

    Args:
        frame: uint8 [H, W, 3] RGB.
        masks: E bool masks [H, W] (or an array [E, H, W]).
        boxes: E boxes (x1, y1, x2, y2) in pixels, or None for no boxes.
        colors: E RGB colours; defaults to `color_palette(E)`.
        labels: E short texts drawn at the top-left corner of each box, or None.
    Returns:
        uint8 [H, W, 3].
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    n = len(masks)
    colors = list(colors) if colors is not None else color_palette(n)
    if len(colors) < n:
        raise ValueError(f"got {n} masks but only {len(colors)} colours")
    if boxes is not None and len(boxes) != n:
        raise ValueError(f"got {n} masks but {len(boxes)} boxes")
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {n} masks but {len(labels)} labels")
    out = frame.astype(np.float32)
    for mask, color in zip(masks, colors):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != frame.shape[:2]:
            raise ValueError(f"mask of shape {mask.shape} does not fit a frame of {frame.shape[:2]}")
        out[mask] = out[mask] * (1.0 - alpha) + np.asarray(color, dtype=np.float32) * alpha
    image = Image.fromarray(out.astype(np.uint8))
    if boxes is not None:
        draw = ImageDraw.Draw(image)
        for i, (box, color) in enumerate(zip(boxes, colors)):
            x1, y1, x2, y2 = (float(v) for v in box)
            draw.rectangle(((x1, y1), (x2, y2)), outline=tuple(color), width=box_width)
            if labels is not None:
                draw.text((x1 + box_width + 1, y1 + box_width), labels[i], fill=tuple(color))
    return np.asarray(image)


def _even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where needed: yuv420p needs an even width and height."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if (h % 2 or w % 2) else frame


class Mp4Writer:
    """Write RGB frames to an mp4 file with PyAV (H.264 where available, else MPEG-4 Part 2).

    Use as a context manager; every frame must have the first frame's size.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        import av

        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self._av = av
        self._rate = Fraction(fps).limit_denominator(1001)
        with self._writing():
            self._container = av.open(str(self.path), "w")
        self._stream = None
        self._size: tuple[int, int] | None = None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """PyAV's errors (some are no OSError) as an `OutputError` naming the file."""
        try:
            yield
        except (OSError, self._av.error.FFmpegError) as exc:
            raise output_error(exc, self.path) from exc

    def _open_stream(self, height: int, width: int) -> None:
        codec = "libx264" if "libx264" in self._av.codecs_available else "mpeg4"
        stream = self._container.add_stream(codec, rate=self._rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20"} if codec == "libx264" else {"qscale": "2"}
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] RGB frame."""
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._size is None:
            self._size = frame.shape[:2]
            padded = _even(frame)
            self._open_stream(padded.shape[0], padded.shape[1])
        elif frame.shape[:2] != self._size:
            raise ValueError(f"all frames need the size {self._size}, got {frame.shape[:2]}")
        video_frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(frame)), format="rgb24")
        with self._writing():
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)

    def close(self) -> None:
        with self._writing():
            try:
                if self._stream is not None:
                    for packet in self._stream.encode():
                        self._container.mux(packet)
            finally:
                self._container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GifWriter:
    """Collect RGB frames (shrunk so the longer side is at most `max_side`) and save a looping GIF on close."""

    def __init__(self, path: str | os.PathLike[str], fps: float, max_side: int | None = 480) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.duration_ms = max(round(1000.0 / fps), 20)  # browsers play faster GIF frames at 100 ms
        self.max_side = max_side
        self._frames: list[Image.Image] = []

    def write(self, frame: np.ndarray) -> None:
        """Append one uint8 [H, W, 3] RGB frame."""
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
        if self.max_side is not None and max(image.size) > self.max_side:
            scale = self.max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
        self._frames.append(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256))

    def close(self) -> None:
        if not self._frames:
            raise ValueError(f"no frames to write to {self.path}")
        first, *rest = self._frames
        with writing(self.path):
            first.save(self.path, save_all=True, append_images=rest, duration=self.duration_ms, loop=0, optimize=False)
        self._frames = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()


def write_mp4(path: str | os.PathLike[str], frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write uint8 [H, W, 3] RGB frames to an mp4 file."""
    with Mp4Writer(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)


def write_gif(path: str | os.PathLike[str], frames: Iterable[np.ndarray], fps: float, max_side: int | None = 480) -> Path:
    """Write uint8 [H, W, 3] RGB frames to a looping GIF."""
    with GifWriter(path, fps, max_side) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)
