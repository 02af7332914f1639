"""Media files that tests write in the exact formats the code under test reads."""

from __future__ import annotations

import csv
import struct
import zlib
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path

import av
import h5py
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


def write_a2d_instances(path: Path, masks: Mapping[int, np.ndarray]) -> Path:
    """An A2D-Sentences frame annotation (`.h5`): instance ids, masks in MATLAB order ([N, W, H]; [W, H]
    for one instance) and boxes, from non-empty bool/uint8 masks [H, W] by instance id."""
    stack, boxes = [], []
    for mask in masks.values():
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
        stack.append(mask.T.astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["instance"] = np.array(list(masks), dtype=np.float64)
        f["reMask"] = stack[0] if len(stack) == 1 else np.stack(stack)
        f["reBBox"] = np.array(boxes[0] if len(boxes) == 1 else np.array(boxes).T, dtype=np.float64)
    return path


def write_a2d_tables(root: Path, videos: Iterable[list[str]], queries: Iterable[tuple[str, str, str]],
                     missed: str) -> None:
    """A2D-Sentences' tables: `Release/videoset.csv` (one row per video), `a2d_annotation.txt` (video id,
    instance id, query) and `a2d_missed_videos.txt` (its text as given)."""
    (root / "Release").mkdir(parents=True, exist_ok=True)
    (root / "text_annotations").mkdir(parents=True, exist_ok=True)
    with (root / "Release" / "videoset.csv").open("w", newline="") as f:
        csv.writer(f).writerows(videos)
    with (root / "text_annotations" / "a2d_annotation.txt").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "instance_id", "query"])
        writer.writerows(queries)
    (root / "text_annotations" / "a2d_missed_videos.txt").write_text(missed)
