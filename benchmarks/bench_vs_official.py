"""bifit side by side with the official BIFIT implementation: latency, peak memory and outputs.

Every measurement runs in a fresh process, and the sides alternate (official, bifit, official,
bifit, ...) so that they share the machine's load; a ratio is the median over the pairs of
per-pair ratios. Both sides get the same seeded weights (every tensor of the official state dict
from `tests/seeded_weights.py`, as the equivalence fixture does) and the same inputs (smooth random
ImageNet-normalised frames, written once by this process). The official code runs as
`scripts/make_official_model_fixture.py` runs it: imported from `--official-root`, with its
pure-PyTorch deformable attention, a ResNet-50 without downloads and the tiny local RoBERTa.

Workloads (frames 360 x 640):

- W1: one expression, 6 frames, one eval forward.
- W2: one video of 36 frames with 4 expressions. The official inference runs the whole video once
  per expression; bifit runs the pixels once and hands the 4 expressions to one decode call.
- W3: whole-video eval forward of 12, 24 and 48 frames (`W3_12`, ...), and bifit's clip mode over a
  300-frame video file in clips of 12 (`W3_clip300`; no official counterpart: the official
  inference holds the whole video).
- W4: one training step, batch 1, 5 frames padded to a multiple of 32 as the official training:
  forward, criterion, backward, gradient clipping (0.1), AdamW. Dropout is off on both sides, so
  that the losses can be compared.

Sides: `official`; `bifit` (the source tree this script belongs to, or `--bifit-src`); any name
given a bifit source tree with `--tree NAME=DIR` (e.g. the commit before a change, for before/after
figures); `NAME-fast`, tree NAME in fast mode (`bifit-fast`; inference workloads only); and
`NAME-checkpointed`, tree NAME with activation checkpointing (`bifit-checkpointed`; W4 only).
Ratios are reported for every later side against every earlier one in `--sides`.

The official side needs transformers 4.x; install it into a separate directory and name it with
`--official-pythonpath` (it is put first on that side's PYTHONPATH only)::

    pip install --target /tmp/tf4 --no-deps "transformers==4.46.*" "tokenizers>=0.20,<0.21" \\
        "huggingface_hub<1.0" requests urllib3 idna charset_normalizer certifi
    PYTHONPATH=src python benchmarks/bench_vs_official.py --official-root /path/to/BIFIT \\
        --official-pythonpath /tmp/tf4 --output bench_vs_official.json
    git archive HEAD~1 src | tar -x -C /tmp/before
    PYTHONPATH=src python benchmarks/bench_vs_official.py --sides before bifit \\
        --tree before=/tmp/before/src --workloads W1 --output before_after.json

Writes one JSON object: the configuration, and per workload every run (latency, peak RSS, RSS
before the timed part, on CUDA the peak allocated memory), the medians, the ratios and the largest
output differences between the sides (mask logits, boxes, class logits; mask IoU at probability
0.5; for W4 the loss terms and the gradient norm).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_SCRIPT = REPO_ROOT / "scripts" / "make_official_model_fixture.py"
REFERENCE = REPO_ROOT / "tests" / "fixtures" / "official_model" / "reference.pt"
TINY_ROBERTA = REPO_ROOT / "tests" / "fixtures" / "tiny_roberta"
FAST_SUFFIX = "-fast"
CHECKPOINTED_SUFFIX = "-checkpointed"
VARIANT_SUFFIXES = (FAST_SUFFIX, CHECKPOINTED_SUFFIX)
RESULT_PREFIX = "BENCH-RESULT "

CAPTION = "the man in the red shirt riding a bike"
EXPRESSIONS = [
    "the person riding a horse on the left",
    "a dog running on the grass",
    "the red car parked on the right side of the road",
    "the small bird flying at the top",
]

# kind: forward (one eval forward per expression set), expressions (several expressions of one
# video), clip (bifit's Segmenter in clip mode over a video file), train_step.
WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": {"kind": "forward", "frames": 6, "height": 360, "width": 640},
    "W2": {"kind": "expressions", "frames": 36, "height": 360, "width": 640, "expressions": 4},
    "W3_12": {"kind": "forward", "frames": 12, "height": 360, "width": 640},
    "W3_24": {"kind": "forward", "frames": 24, "height": 360, "width": 640},
    "W3_48": {"kind": "forward", "frames": 48, "height": 360, "width": 640},
    "W3_clip300": {"kind": "clip", "frames": 300, "height": 360, "width": 640, "clip_length": 12},
    "W4": {"kind": "train_step", "frames": 5, "height": 360, "width": 640},
}
# The same structure at a size that runs in seconds (for testing this script).
TINY_WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": {"kind": "forward", "frames": 2, "height": 64, "width": 96},
    "W2": {"kind": "expressions", "frames": 2, "height": 64, "width": 96, "expressions": 2},
    "W3_12": {"kind": "forward", "frames": 2, "height": 64, "width": 96},
    "W3_24": {"kind": "forward", "frames": 3, "height": 64, "width": 96},
    "W3_48": {"kind": "forward", "frames": 4, "height": 64, "width": 96},
    "W3_clip300": {"kind": "clip", "frames": 5, "height": 64, "width": 96, "clip_length": 2},
    "W4": {"kind": "train_step", "frames": 2, "height": 64, "width": 96},
}
WORKLOAD_GROUPS = {"W3": ["W3_12", "W3_24", "W3_48", "W3_clip300"]}
WARMUP_FRAMES = 2


def load_script(path: Path) -> ModuleType:
    """A script that is not part of a package, imported as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ measuring
def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux `clear_refs` 5); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory since the last `reset_peak_rss` (else since the process started)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """Wall time, peak RSS and (CUDA) peak allocated memory of the code in the `with` block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.result: dict[str, Any] = {}

    def __enter__(self) -> "Timed":
        self.result["rss_before_mib"] = round(current_rss_mib(), 1)
        self.result["peak_rss_reset"] = reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.result["latency_s"] = round(time.perf_counter() - self._start, 4)
        self.result["peak_rss_mib"] = round(peak_rss_mib(), 1)
        if self.device.type == "cuda":
            self.result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)


# ------------------------------------------------------------------------------------ inputs
def official_state_dict(reference: dict) -> dict[str, torch.Tensor]:
    """The seeded official-format state dict of the equivalence fixture, rebuilt from its key names."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        from seeded_weights import seeded_tensor
    finally:
        sys.path.remove(str(REPO_ROOT / "tests"))
    shared = reference.get("shared_keys", {})
    state = {}
    for key, shape in reference["state_dict_shapes"].items():
        if reference["state_dict_dtypes"][key] != "torch.float32":
            state[key] = torch.arange(shape[-1]).expand(*shape).clone()  # position ids
        else:
            state[key] = seeded_tensor(shared.get(key, key), shape, reference["seed"])
    return state


def ellipse_masks(frames: int, height: int, width: int) -> torch.Tensor:
    """bool [T, H, W]: an ellipse moving to the right, the training target of W4."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    masks = []
    for t in range(frames):
        cx = width * (0.3 + 0.4 * t / max(frames - 1, 1))
        masks.append(((yy - height / 2) / (height / 4)) ** 2 + ((xx - cx) / (width / 6)) ** 2 <= 1)
    return torch.stack(masks)


def uint8_frames(frames: int, height: int, width: int, seed: int = 0):  # noqa: ANN201 (numpy iterator)
    """uint8 [H, W, 3] frames one at a time: a smooth random background with a square moving across."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(height // 8, 2), max(width // 8, 2), 3), dtype=np.uint8)
    background = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    side = max(4, height // 4)
    for t in range(frames):
        frame = background.copy()
        x = int((width - side) * (t % 50) / 49)
        frame[height // 3 : height // 3 + side, x : x + side] = (220, 40, 40)
        yield frame


def prepare_inputs(name: str, spec: dict[str, Any], workdir: Path, seed: int) -> dict[str, str]:
    """Write the inputs of one workload into `workdir`; returns their paths."""
    fixture = load_script(FIXTURE_SCRIPT)
    frames, height, width = spec["frames"], spec["height"], spec["width"]
    paths = {}
    if spec["kind"] == "clip":
        from bifit.inference.visualize import write_mp4

        paths["video_file"] = str(write_mp4(workdir / f"{name}.mp4", uint8_frames(frames, height, width, seed), fps=25))
        return paths
    generator = torch.Generator().manual_seed(seed)
    data: dict[str, Any] = {"video": fixture.make_video(frames, height, width, generator)}
    if spec["kind"] == "forward":
        data["captions"] = [CAPTION]
    elif spec["kind"] == "expressions":
        data["captions"] = EXPRESSIONS[: spec["expressions"]]
    else:
        from bifit.data.targets import build_target

        data["captions"] = [CAPTION]
        data["target"] = build_target(ellipse_masks(frames, height, width), CAPTION)
    paths["inputs"] = str(workdir / f"{name}.pt")
    torch.save(data, paths["inputs"])
    return paths


def held_activations_mib_per_frame(height: int, width: int, hidden: int = 256, queries: int = 5) -> float:
    """What whole-video inference must keep per frame until the masks are made: the input frame, the
    stride-4 backbone features (256 channels) and mask features (`hidden`), the encoder memory over
    the four levels (strides 8-64) and the stride-4 mask logits of every query (float32)."""
    h4, w4 = math.ceil(height / 4), math.ceil(width / 4)
    tokens, h, w = 0, h4, w4
    for _ in range(4):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        tokens += h * w
    floats = 3 * height * width + (256 + hidden) * h4 * w4 + hidden * tokens + queries * h4 * w4
    return floats * 4 / 2**20


# ------------------------------------------------------------------------------------ sides
class OfficialSide:
    """The official model and criterion, seeded as the equivalence fixture seeds them."""

    def __init__(self, official_root: Path, device: torch.device, seed: int) -> None:
        import contextlib

        fixture = load_script(FIXTURE_SCRIPT)
        self._stack = contextlib.ExitStack()
        self._stack.callback(fixture._torchvision_without_pretrained_kwarg())
        official = self._stack.enter_context(fixture._official_imports(official_root, TINY_ROBERTA))
        parser = argparse.ArgumentParser(parents=[official["get_args_parser"]()])
        args = parser.parse_args(fixture.RELEASED_FLAGS + ["--device", str(device)])
        torch.manual_seed(seed)
        model, self.criterion, _ = official["build"](args)
        fixture.seed_model(model, seed)
        self.model = model.to(device).eval()
        self.nested = official["nested_tensor_from_videos_list"]
        self.device = device

    def close(self) -> None:
        self._stack.close()

    def forward(self, video: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        """The official inference: the whole video once per expression."""
        size = torch.tensor(video.shape[-2:], device=self.device)
        outs = []
        with torch.no_grad():
            for caption in captions:
                out = self.model([video], [caption], [{"size": size}])
                outs.append({k: out[k][0] for k in ("pred_logits", "pred_boxes", "pred_masks")})
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    def train_step(self, video: torch.Tensor, target: dict, optimizer: torch.optim.Optimizer | None) -> dict:
        samples = self.nested([video], size_divisibility=32)
        target = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        outputs = self.model(samples, [target["caption"]], [target])
        losses = self.criterion(outputs, [target])
        weights = self.criterion.weight_dict
        loss = sum(losses[k] * weights[k] for k in losses if k in weights)
        return _finish_train_step(self.model, loss, {k: v for k, v in losses.items() if k in weights}, optimizer)

    def train(self) -> None:
        self.model.train()
        _disable_dropout(self.model)


class BifitSide:
    """bifit's model, loaded from the seeded official checkpoint; `fast` prepares its fast mode,
    `checkpointing` switches activation checkpointing on (for training steps)."""

    def __init__(self, checkpoint: Path, device: torch.device, fast: bool, checkpointing: bool = False) -> None:
        import bifit

        self.source = str(Path(bifit.__file__).parent)
        self.model = bifit.load_official_checkpoint(checkpoint, text_encoder=str(TINY_ROBERTA), device=device)
        if checkpointing:
            self.model.set_activation_checkpointing(True)
        self.fast = fast
        if fast:
            from bifit.modeling.fast import prepare_fast_inference

            self.model = prepare_fast_inference(self.model)
        self.device = device

    def close(self) -> None:
        pass

    def forward(self, video: torch.Tensor, captions: list[str]) -> dict[str, torch.Tensor]:
        """The pixels once, all expressions in one decode call (as `bifit.Segmenter`)."""
        with torch.inference_mode():
            out = self.model(video[None], captions, caption_videos=[0] * len(captions))
        return {k: out[k].float() for k in ("pred_logits", "pred_boxes", "pred_masks")}

    def segment_file(self, path: str, clip_length: int, caption: str) -> dict[str, Any]:
        from bifit.inference.predictor import Segmenter

        segmenter = Segmenter(self.model, clip_length=clip_length, short_side=None)
        with segmenter.stream(path, [caption]) as result:
            area = sum(int(frame.masks.sum()) for frame in result)  # consumed frame by frame, as a writer would
        return {"total_mask_area": area}

    def train_step(self, video: torch.Tensor, target: dict, optimizer: torch.optim.Optimizer | None) -> dict:
        from bifit.training.criterion import build_criterion

        target = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        outputs = self.model([video], [target["caption"]], size_divisibility=32)
        losses = build_criterion()(outputs, [target])
        loss = losses.pop("loss")
        return _finish_train_step(self.model, loss, losses, optimizer)

    def train(self) -> None:
        self.model.train()
        _disable_dropout(self.model)


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
        elif isinstance(getattr(module, "dropout_prob", None), float):
            # transformers 4.x's SDPA attention (the official side's RoBERTa) passes this float to
            # scaled_dot_product_attention in training mode; no Dropout module carries it.
            module.dropout_prob = 0.0


def _finish_train_step(model: torch.nn.Module, loss: torch.Tensor, terms: dict, optimizer) -> dict:  # noqa: ANN001
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 0.1)
    if optimizer is not None:
        optimizer.step()
    optimizer_zero = optimizer.zero_grad if optimizer is not None else model.zero_grad
    optimizer_zero(set_to_none=True)
    return {"loss": float(loss), "grad_norm": float(grad_norm), "terms": {k: float(v) for k, v in terms.items()}}


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    spec = job["spec"]
    if job["side"] == "official":
        side: OfficialSide | BifitSide = OfficialSide(Path(job["official_root"]), device, job["seed"])
    else:
        side = BifitSide(Path(job["checkpoint"]), device, fast=job["side"].endswith(FAST_SUFFIX),
                         checkpointing=job["side"].endswith(CHECKPOINTED_SUFFIX))
    result: dict[str, Any] = {}
    try:
        if spec["kind"] == "clip":
            side.forward(torch.zeros(WARMUP_FRAMES, 3, spec["height"], spec["width"], device=device), [CAPTION])
            with Timed(device) as timed:
                result.update(side.segment_file(job["video_file"], spec["clip_length"], CAPTION))
            result["latency_per_frame_s"] = round(timed.result["latency_s"] / spec["frames"], 4)
        elif spec["kind"] in ("forward", "expressions"):
            data = torch.load(job["inputs"], weights_only=True)
            video = data["video"].to(device)
            side.forward(video[:WARMUP_FRAMES], data["captions"][:1])
            with Timed(device) as timed:
                out = side.forward(video, data["captions"])
            result["latency_per_frame_s"] = round(timed.result["latency_s"] / spec["frames"], 4)
            torch.save({k: v.cpu() for k, v in out.items()}, job["outputs"])
        else:
            data = torch.load(job["inputs"], weights_only=True)
            video, target = data["video"].to(device), data["target"]
            side.train()
            short = dict(target, masks=target["masks"][:WARMUP_FRAMES], boxes=target["boxes"][:WARMUP_FRAMES],
                         valid=target["valid"][:WARMUP_FRAMES], labels=target["labels"][:WARMUP_FRAMES],
                         frames_idx=target["frames_idx"][:WARMUP_FRAMES])
            side.train_step(video[:WARMUP_FRAMES], short, optimizer=None)  # warm-up: no weight update
            params = [p for p in side.model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=5e-4)
            with Timed(device) as timed:
                step = side.train_step(video, target, optimizer)
            torch.save(step, job["outputs"])
        result.update(timed.result)
        if isinstance(side, BifitSide):
            result["source"] = side.source
    finally:
        side.close()
    return result


# ------------------------------------------------------------------------------------ comparing
def compare_outputs(a_path: str, b_path: str) -> dict[str, float]:
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    if "loss" in a:
        terms = set(a["terms"]) & set(b["terms"])
        return {
            "loss_abs": abs(a["loss"] - b["loss"]),
            "loss_rel": abs(a["loss"] - b["loss"]) / max(abs(a["loss"]), 1e-12),
            "loss_terms_max_abs": max((abs(a["terms"][k] - b["terms"][k]) for k in terms), default=float("nan")),
            "loss_terms_compared": len(terms),
            "grad_norm_rel": abs(a["grad_norm"] - b["grad_norm"]) / max(abs(a["grad_norm"]), 1e-12),
        }
    diff = {f"{k}_max_abs": float((a[k] - b[k]).abs().max()) for k in ("pred_logits", "pred_boxes", "pred_masks")}
    ma, mb = a["pred_masks"] > 0, b["pred_masks"] > 0
    union = int((ma | mb).sum())
    diff["mask_iou"] = int((ma & mb).sum()) / union if union else 1.0
    diff["mask_pixels_differing"] = int((ma ^ mb).sum())
    return diff


def summarise(runs: dict[str, list[dict]], sides: list[str]) -> dict[str, Any]:
    """Medians per side and median per-pair ratios of every later side to every earlier one."""
    medians, ratios = {}, {}
    keys = ("latency_s", "peak_rss_mib", "peak_cuda_mib", "latency_per_frame_s")
    for side in sides:
        ok = [r for r in runs.get(side, []) if "error" not in r]
        medians[side] = {k: statistics.median(r[k] for r in ok) for k in keys if ok and all(k in r for r in ok)}
    for i, base in enumerate(sides):
        for other in sides[i + 1 :]:
            pairs = list(zip(runs.get(base, []), runs.get(other, [])))
            entry = {}
            for key, name in (("latency_s", "latency"), ("peak_rss_mib", "peak_rss"), ("peak_cuda_mib", "peak_cuda")):
                values = [o[key] / b[key] for b, o in pairs if key in b and key in o and b[key] > 0]
                if values:
                    entry[name] = round(statistics.median(values), 4)
                    entry[f"{name}_pairs"] = [round(v, 4) for v in values]
            if entry:
                ratios[f"{other}/{base}"] = entry
    return {"median": medians, "ratios": ratios}


def rss_growth(workloads: dict[str, Any], sides: list[str], height: int, width: int) -> dict[str, Any]:
    """Least-squares slope of peak RSS over the whole-video frame counts, per side."""
    growth: dict[str, Any] = {"held_activations_mib_per_frame": round(held_activations_mib_per_frame(height, width), 2)}
    for side in sides:
        points = [
            (workloads[name]["spec"]["frames"], workloads[name]["median"][side]["peak_rss_mib"])
            for name in ("W3_12", "W3_24", "W3_48")
            if name in workloads and "peak_rss_mib" in workloads[name]["median"].get(side, {})
        ]
        if len(points) >= 2:
            mean_t = statistics.fmean(t for t, _ in points)
            mean_r = statistics.fmean(r for _, r in points)
            slope = sum((t - mean_t) * (r - mean_r) for t, r in points) / sum((t - mean_t) ** 2 for t, _ in points)
            growth[side] = {"rss_mib_per_frame": round(slope, 2), "points": points}
    return growth


# ------------------------------------------------------------------------------------ driver
def side_tree(side: str) -> str:
    """The source tree a bifit side runs ("bifit-fast" -> "bifit")."""
    for suffix in VARIANT_SUFFIXES:
        if side.endswith(suffix):
            return side[: -len(suffix)]
    return side


def child_env(side: str, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    if side == "official":
        paths = [str(p) for p in args.official_pythonpath]
    else:
        paths = [str(args.trees[side_tree(side)])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_job(job: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(job["side"], args), timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
    return {"error": reason, "stderr_tail": tail}


def expand_workloads(names: list[str]) -> list[str]:
    out = []
    for name in names:
        out.extend(WORKLOAD_GROUPS.get(name, [name]))
    unknown = [n for n in out if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {sorted(WORKLOADS)} or {sorted(WORKLOAD_GROUPS)}")
    return out


def side_runs(side: str, spec: dict[str, Any]) -> bool:
    if side == "official":
        return spec["kind"] != "clip"  # the official inference has no clip mode
    if side.endswith(FAST_SUFFIX):
        return spec["kind"] != "train_step"  # fast mode is for inference
    if side.endswith(CHECKPOINTED_SUFFIX):
        return spec["kind"] == "train_step"  # activation checkpointing changes only training
    return True


def parse_trees(values: list[str], bifit_src: Path) -> dict[str, Path]:
    trees = {"bifit": bifit_src}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path or name == "official" or name.endswith(VARIANT_SUFFIXES):
            raise SystemExit(f"--tree takes NAME=DIR (NAME not 'official' and not ending in one of {VARIANT_SUFFIXES}), "
                             f"got {value!r}")
        trees[name] = Path(path)
    return trees


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-root", type=Path, default=None, help="checkout of LANMNG/BIFIT")
    parser.add_argument("--official-pythonpath", type=Path, nargs="*", default=[],
                        help="directories put first on the official side's PYTHONPATH (transformers 4.x)")
    parser.add_argument("--bifit-src", type=Path, default=REPO_ROOT / "src", help="source tree of the bifit side")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                        help="another bifit source tree, measured as side NAME (and NAME-fast)")
    parser.add_argument("--sides", nargs="+", default=["official", "bifit"],
                        help="official, bifit, bifit-fast, a --tree NAME or NAME-fast (default: official bifit)")
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3", "W4"])
    parser.add_argument("--pairs", type=int, default=3, help="runs per side and workload")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny frames and frame counts (tests this script)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(RESULT_PREFIX + json.dumps(run_child(json.loads(args.child))), flush=True)
        return None

    if "official" in args.sides and (args.official_root is None or not (args.official_root / "models").is_dir()):
        parser.error("the official side needs --official-root, a checkout of LANMNG/BIFIT")
    args.trees = parse_trees(args.tree, args.bifit_src)
    unknown = [side for side in args.sides if side != "official" and side_tree(side) not in args.trees]
    if unknown:
        parser.error(f"unknown sides {unknown}: use official, bifit, bifit-fast or name a source tree with --tree")
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    table = TINY_WORKLOADS if args.tiny else WORKLOADS
    names = expand_workloads(args.workloads)

    report: dict[str, Any] = {
        "config": {
            "sides": args.sides, "pairs": args.pairs, "threads": args.threads, "device": args.device,
            "tiny": args.tiny, "torch": torch.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.uname().processor, "cpu_count": os.cpu_count(),
            "official_checkout": _git_commit(args.official_root) if "official" in args.sides else None,
            "trees": {name: {"path": str(path), "commit": _git_commit(path)} for name, path in args.trees.items()},
        },
        "workloads": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_vs_official_") as tmp:
        workdir = Path(tmp)
        checkpoint = workdir / "seeded_official.pth"
        torch.save({"model": official_state_dict(torch.load(REFERENCE, weights_only=True))}, checkpoint)
        for name in names:
            spec = table[name]
            inputs = prepare_inputs(name, spec, workdir, args.seed)
            sides = [s for s in args.sides if side_runs(s, spec)]
            runs: dict[str, list[dict]] = {s: [] for s in sides}
            outputs: dict[str, str] = {}
            for pair in range(args.pairs):
                for side in sides:
                    out_path = workdir / f"{name}_{side}_{pair}.pt"
                    job = {
                        "side": side, "spec": spec, "threads": args.threads, "device": args.device,
                        "seed": args.seed, "checkpoint": str(checkpoint), "outputs": str(out_path),
                        "official_root": str(args.official_root or ""), **inputs,
                    }
                    result = run_job(job, args)
                    runs[side].append(result)
                    if "error" not in result and out_path.is_file():
                        outputs.setdefault(side, str(out_path))
                    print(json.dumps({"workload": name, "side": side, "pair": pair, **result}), file=sys.stderr)
            entry: dict[str, Any] = {"spec": spec, "runs": runs, **summarise(runs, sides), "differences": {}}
            for i, base in enumerate(sides):
                for other in sides[i + 1 :]:
                    if base in outputs and other in outputs:
                        entry["differences"][f"{other} vs {base}"] = compare_outputs(outputs[other], outputs[base])
            report["workloads"][name] = entry
        if any(n.startswith("W3_") for n in names):
            spec = table["W3_12"]
            report["W3_rss_growth"] = rss_growth(report["workloads"], args.sides, spec["height"], spec["width"])
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return report


def _git_commit(path: Path | None) -> str | None:
    """`<commit> <subject>` of the checkout holding `path`, or None outside git."""
    if path is None:
        return None
    proc = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%H %s"], capture_output=True, text=True)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


if __name__ == "__main__":
    main()
