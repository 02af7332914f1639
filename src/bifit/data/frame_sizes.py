"""The size a frame is resized to before the model, as the official transforms compute it, and the
limit that refuses absurd shapes. Plain arithmetic, free of torch, so that the command line can
show the defaults without importing it."""

from __future__ import annotations

__all__ = ["EVAL_SHORT_SIZE", "MAX_LONG_SIDE", "FrameSizeError", "model_input_hw", "resized_hw"]

#: Shorter side used at evaluation time.
EVAL_SHORT_SIZE = 360
#: Default cap on the longer side of a model input at inference, in pixels after resizing. Normal
#: frames stay far below it (a 16:9 frame at shorter side 360 is 640 wide, 4:1 panoramas 1440); it
#: refuses absurd shapes (a 4000x2 image would become 720000x360) instead of running for minutes.
MAX_LONG_SIDE = 4096


def resized_hw(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output (H, W) when resizing the shorter side to ``size`` with the longer side at most ``max_size``.

    Matches the official ``get_size_with_aspect_ratio`` (and, with ``max_size=None``,
    ``torchvision.transforms.Resize(size)``): the longer side is truncated, not rounded.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


class FrameSizeError(ValueError):
    """A frame whose model input would exceed the longer-side limit (see :func:`model_input_hw`)."""


def model_input_hw(
    height: int,
    width: int,
    short_side: int | None,
    max_long_side: int | None = MAX_LONG_SIDE,
    max_size: int | None = None,
) -> tuple[int, int]:
    """(H, W) of the model input for a ``height`` x ``width`` frame at inference.

    The frame is resized as :func:`resized_hw` does (kept as is when ``short_side`` is None); the result
    is refused when its longer side exceeds ``max_long_side`` (None: no limit), so the limit never
    changes a result, it only refuses.

    Raises:
        FrameSizeError: naming both sizes, the limit and how to raise it.
    """
    out_h, out_w = (height, width) if short_side is None else resized_hw(height, width, short_side, max_size)
    resized = f"resized to {out_w}x{out_h} (shorter side {short_side})" if short_side is not None else "as it is"
    if min(out_h, out_w) < 1:
        raise FrameSizeError(f"a {width}x{height} frame {resized} has no pixels left; crop the frames")
    if max_long_side is not None and max(out_h, out_w) > max_long_side:
        raise FrameSizeError(
            f"a {width}x{height} frame {resized} has a longer side of {max(out_h, out_w)} px, over the limit of "
            f"{max_long_side} px (aspect ratio {max(height, width) / min(height, width):.0f}:1); crop the frames, "
            "or raise the limit with --max-long-side (max_long_side= in Python)"
        )
    return out_h, out_w
