"""Benchmark of frame reading: `bifit.data.video.read_frame_folder` and `bifit.inference.core.load_frames`
(the readers of `bifit segment` and of the benchmark predictions) on a folder of synthetic frames.

Writes --frames JPEG (or PNG) frames of --height x --width pixels into a temporary folder, then times
each reader --repeats times and reports the median seconds per frame. Run it with PYTHONPATH set to
two checkouts in turn to compare them. Prints one JSON object and writes it to --output if given::

    PYTHONPATH=src python benchmarks/bench_frame_reading.py --output bench_frame_reading.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--format", choices=["jpg", "png"], default="jpg")
    parser.add_argument("--short-side", type=int, default=360)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    import bifit
    from bifit.data.video import read_frame_folder
    from bifit.inference.core import load_frames

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp:
        folder = Path(tmp)
        base = rng.integers(0, 256, (args.height // 8 + 1, args.width // 8 + 1, 3), dtype=np.uint8)
        for i in range(args.frames):
            frame = np.kron(np.roll(base, i, axis=1), np.ones((8, 8, 1), np.uint8))[: args.height, : args.width]
            Image.fromarray(frame).save(folder / f"{i:05d}.{args.format}")
        paths = sorted(folder.iterdir())
        timings: dict[str, list[float]] = {"read_frame_folder": [], "load_frames": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            read_frame_folder(folder)
            timings["read_frame_folder"].append(time.perf_counter() - start)
            start = time.perf_counter()
            load_frames(paths, args.short_side)
            timings["load_frames"].append(time.perf_counter() - start)
    result = {
        "bifit": str(Path(bifit.__file__).parent),
        "frames": args.frames,
        "size": [args.height, args.width],
        "format": args.format,
        "seconds_per_frame": {k: statistics.median(v) / args.frames for k, v in timings.items()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
