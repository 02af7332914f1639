"""Drawing of segmentation results, for `bifit segment`, `bifit demo` and the web app alike.

:func:`render_overlay` is the overlay every command writes: the frame enlarged to a viewable size,
each expression's mask filled in its colour and outlined (a ring of its colour inside a dark ring,
so the outline stands out whatever lies under it: a blue mask on a blue object too), its box only
on frames where the mask is not empty, and a legend under the frame naming each expression's
colour. :func:`overlay_masks` is the plain blend of the official visualisation. Overlays are written
as an mp4 video (PyAV) and an animated GIF (Pillow).
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..outputs import output_error, writing

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

__all__ = [
    "DISPLAY_SHORT_SIDE",
    "GifWriter",
    "Mp4Writer",
    "color_palette",
    "display_scale",
    "overlay_masks",
    "render_overlay",
    "render_strip",
    "write_gif",
    "write_mp4",
]

# Distinct, readable colours for the first expressions (Sasha Trubetskoy's list, RGB).
_BASE_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (70, 240, 240), (245, 130, 48), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)


#: Overlays of smaller frames are enlarged (by a whole number) to at least this shorter side.
DISPLAY_SHORT_SIDE = 360
#: ... but never past this longer side (a strip-like frame stays as it is).
MAX_DISPLAY_LONG_SIDE = 1920
# Colours closer than this (Euclidean RGB distance) to one to avoid are skipped by `color_palette`.
_AVOID_DISTANCE = 80.0
# Overlay geometry, in pixels of the displayed image.
_OUTLINE = 2
_BOX_WIDTH = 2
_MIN_LEGEND_LINE = 16


def color_palette(n: int, avoid: Sequence[Sequence[int]] = ()) -> list[tuple[int, int, int]]:
    """`n` distinct RGB colours; beyond the fixed first ten, hues step by the golden ratio.

    Args:
        n: number of colours.
        avoid: RGB colours known to fill the frames (e.g. the objects of a synthetic clip); palette
            colours close to any of them are skipped, so that masks stand out.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    avoided = np.asarray(avoid, dtype=np.float64).reshape(-1, 3)

    def distinct(color: tuple[int, int, int]) -> bool:
        return not len(avoided) or float(np.min(np.linalg.norm(avoided - np.asarray(color), axis=1))) >= _AVOID_DISTANCE

    colors = [c for c in _BASE_COLORS if distinct(c)][:n]
    step = 0
    while len(colors) < n:
        r, g, b = colorsys.hsv_to_rgb((step * 0.618033988749895) % 1.0, 0.85, 0.95)
        color = (int(r * 255), int(g * 255), int(b * 255))
        step += 1
        if distinct(color) or step > 64 * n:
            colors.append(color)
    return colors


def display_scale(height: int, width: int, min_short_side: int | None = DISPLAY_SHORT_SIDE) -> int:
    """The whole-number enlargement that brings a frame's shorter side to at least `min_short_side`
    without taking its longer side past `MAX_DISPLAY_LONG_SIDE` (1 when it is already that large, or
    when `min_short_side` is None)."""
    if min_short_side is None or min(height, width) >= min_short_side:
        return 1
    wanted = -(-int(min_short_side) // min(height, width))
    return max(1, min(wanted, MAX_DISPLAY_LONG_SIDE // max(height, width)))


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


def _ring(mask: np.ndarray, inside: bool, width: int) -> np.ndarray:
    """The `width`-pixel band just inside (or just outside) the boundary of a bool mask."""
    import cv2

    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    as_bytes = mask.astype(np.uint8)
    if inside:
        return mask & ~cv2.erode(as_bytes, kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
    return cv2.dilate(as_bytes, kernel).astype(bool) & ~mask


def _legend(width: int, texts: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """uint8 [h, width, 3]: one line per expression, its colour swatch then its text (cut to fit)."""
    line = max(_MIN_LEGEND_LINE, width // 24)
    image = Image.new("RGB", (width, line * len(texts) + line // 4), (24, 24, 24))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(8, line - 5))
    swatch = line - 6
    for i, (text, color) in enumerate(zip(texts, colors)):
        top = line // 8 + i * line
        draw.rectangle((4, top + 3, 4 + swatch, top + 3 + swatch), fill=tuple(color), outline=(255, 255, 255))
        room = width - (swatch + 14)
        shown = text
        while shown and draw.textlength(shown, font=font) > room:
            shown = shown[:-2] + "…" if len(shown) > 1 else ""
        draw.text((swatch + 10, top + 1), shown, fill=(235, 235, 235), font=font)
    return np.asarray(image)


def render_overlay(
    frame: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray | None,
    colors: Sequence[tuple[int, int, int]],
    legend: Sequence[str] | None = None,
    scale: int = 1,
    alpha: float = 0.45,
) -> np.ndarray:
    """One frame of the overlay every bifit command writes.

    Args:
        frame: uint8 [H, W, 3] RGB.
        masks: bool [E, H, W], one per expression; an empty mask is drawn as nothing (no box).
        boxes: [E, 4] (x1, y1, x2, y2) pixels of `frame`, or None for no boxes.
        colors: E RGB colours.
        legend: E texts shown under the frame beside their colour, or None for no legend.
        scale: whole-number enlargement for display (see :func:`display_scale`).
        alpha: opacity of the mask fill.

    Returns:
        uint8 [H * scale + legend height, W * scale, 3].
    """
    frame = np.asarray(frame)
    masks = np.asarray(masks, dtype=bool)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    if masks.ndim != 3 or masks.shape[1:] != frame.shape[:2]:
        raise ValueError(f"masks must be [E, {frame.shape[0]}, {frame.shape[1]}], got {masks.shape}")
    count = masks.shape[0]
    for name, values in (("colours", colors), ("boxes", boxes), ("legend texts", legend)):
        if values is not None and len(values) != count:
            raise ValueError(f"got {count} masks but {len(values)} {name}")
    if scale < 1:
        raise ValueError(f"scale must be a positive whole number, got {scale}")
    height, width = frame.shape[:2]
    if scale > 1:
        big = Image.fromarray(frame).resize((width * scale, height * scale), Image.Resampling.BILINEAR)
        frame = np.asarray(big)
        masks = masks.repeat(scale, axis=1).repeat(scale, axis=2)
    shown = [i for i in range(count) if masks[i].any()]
    out = np.array(overlay_masks(frame, masks[shown], colors=[colors[i] for i in shown], alpha=alpha) if shown else frame)
    for i in shown:
        out[_ring(masks[i], inside=False, width=1)] = (16, 16, 16)
        out[_ring(masks[i], inside=True, width=_OUTLINE)] = colors[i]
    if boxes is not None and shown:
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        for i in shown:
            x1, y1, x2, y2 = (float(v) * scale for v in boxes[i])
            draw.rectangle(((x1, y1), (x2, y2)), outline=tuple(colors[i]), width=_BOX_WIDTH)
        out = np.asarray(image)
    if legend is None:
        return out
    return np.concatenate([out, _legend(out.shape[1], legend, colors)], axis=0)


def render_strip(
    frames: np.ndarray, masks: np.ndarray | None = None, boxes: np.ndarray | None = None, gap: int = 2
) -> np.ndarray:
    """Frames side by side with a mask overlay and boxes, for looking at samples.

    Args:
        frames: uint8 [T, H, W, 3].
        masks: optional bool [T, H, W]; pixels outside the mask are darkened.
        boxes: optional [T, 4] ``xyxy`` pixel boxes; all-zero boxes are skipped.
        gap: white pixels between frames.

    Returns:
        uint8 [H, T*W + (T-1)*gap, 3].
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    num_frames, height, width, _ = frames.shape
    out = np.full((height, num_frames * width + (num_frames - 1) * gap, 3), 255, dtype=np.uint8)
    for t in range(num_frames):
        tile = frames[t].copy()
        if masks is not None:
            tile[~masks[t]] //= 3
        if boxes is not None and np.any(boxes[t] != 0):
            x1, y1, x2, y2 = (round(float(v)) for v in boxes[t])
            tile[y1 : y2 + 1, [x1, x2]] = 255
            tile[[y1, y2], x1 : x2 + 1] = 255
        left = t * (width + gap)
        out[:, left : left + width] = tile
    return out


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
        # Octree quantisation keeps small patches of rare colours (a legend swatch, a thin outline) that
        # the median cut of Pillow's adaptive palette merges into their neighbours.
        self._frames.append(image.quantize(256, method=Image.Quantize.FASTOCTREE))

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
