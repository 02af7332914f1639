"""Media files that tests write in the exact formats the code under test reads."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: Path, frames: np.ndarray, fps: int = 24, codec: str = "mpeg4") -> Path:
    """Encode uint8 frames [T, H, W, 3] with PyAV into any container PyAV infers from the suffix.

    MPEG-4 is written near-lossless (qscale 1) so decoded pixels stay close to the originals; an empty
    `frames` gives a valid file with no frames.
    """
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec == "mpeg4":
            stream.options = {"qscale": "1"}
        container.start_encoding()
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
