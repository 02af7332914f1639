"""Media files that tests write in the exact formats the code under test reads."""

from __future__ import annotations

import struct
import zlib
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


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header claims `width` x `height` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path
