"""Benchmark of `bifit.inference.core.normalize_frames` (uint8 frames -> ImageNet-normalised float32).

Times the normalisation of T random frames of H x W (median of --repeats runs, one torch thread
unless --threads) and prints one JSON object. To compare two commits, run it alternately with each
commit's sources first on PYTHONPATH::

    PYTHONPATH=src python benchmarks/bench_normalize.py --frames 24 --height 360 --width 640
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from bifit.data.normalization import normalize_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
    normalize_frames(frames)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        normalize_frames(frames)
        times.append(time.perf_counter() - start)
    print(json.dumps({
        "frames": args.frames, "height": args.height, "width": args.width, "threads": args.threads,
        "median_s": statistics.median(times), "min_s": min(times),
    }))


if __name__ == "__main__":
    main()
