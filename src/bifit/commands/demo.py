"""`bifit demo`: the bundled model on fresh synthetic clips, scored against their ground truth.

Generates a few synthetic referring clips (moving coloured shapes), segments one expression per
object with the bundled demo model (the backbone runs once per clip for all its expressions),
prints J, F and J&F per expression and overall, and writes an overlay video (mp4) and GIF per clip.
Runs offline on CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..outputs import make_dirs, write_text, writing

if TYPE_CHECKING:
    from ..data.synthetic import SyntheticClip
    from ..modeling.bifit import BifitModel

RESULTS_NAME = "results.json"
COMMAND_TAG = "bifit demo"
DEFAULT_OUTPUT = Path("bifit_demo")
# Frames per second of the overlays: the shapes cross the frame in a few frames.
OVERLAY_FPS = 4.0
# Overlays are enlarged so that their shorter side is at least this many pixels (the synthetic
# frames are tiny, e.g. 96 x 128).
DISPLAY_SHORT_SIDE = 240
# Height of one line of the legend under the overlay.
LEGEND_LINE = 16


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="segment synthetic clips with the bundled model and score it against their ground truth",
        description="Generate synthetic referring clips (moving coloured shapes), segment one expression per "
        "object with the bundled demo model, print J, F and J&F per expression, and write "
        "clip<N>.mp4 / clip<N>.gif overlays and results.json into --output.",
    )
    parser.add_argument("--output", "-o", type=Path, default=DEFAULT_OUTPUT,
                        help=f"output directory (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an output directory that holds files other than an earlier demo's")
    parser.add_argument("--clips", type=int, default=4, help="number of synthetic clips (default 4)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per clip (default: the clip length the model was trained on)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips and expressions (default 0)")
    parser.add_argument("--checkpoint", "-c", type=Path, default=None,
                        help="a demo bundle or a `bifit train` final/ directory (default: the bundled model)")
    parser.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda, cuda:N or mps")
    parser.set_defaults(func=run)


@dataclass
class ExpressionScore:
    """J, F and J&F of one expression over all frames of its clip (DAVIS-2017 means)."""

    clip: int
    expression: str
    object: int
    j: float
    f: float

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2.0


def load_model_for_demo(checkpoint: Path | None, device: str | None = "auto") -> tuple[BifitModel, tuple[int, int], int]:
    """(model, (H, W) of its training frames, T of its training clips) for a demo bundle or a training run's
    `final/` directory (whose parent holds `train_config.json`)."""
    from ..assets import demo_info, load_demo_model
    from ..devices import resolve_device
    from ..modeling.checkpoint import load_pretrained

    device = resolve_device(device)
    if checkpoint is None or is_demo_bundle(checkpoint):
        info = demo_info(checkpoint)
        return load_demo_model(checkpoint, device), info.frame_size, info.num_frames
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    run_config = checkpoint.parent / "train_config.json"
    if not run_config.is_file():
        raise FileNotFoundError(
            f"{run_config} not found: --checkpoint must be a demo bundle or the final/ directory of a "
            "`bifit train` run on synthetic data"
        )
    run = json.loads(run_config.read_text())
    if run.get("data") != "synthetic":
        raise ValueError(f"{checkpoint} was trained on {run.get('data')!r}, not on synthetic clips")
    model = load_pretrained(checkpoint, device)
    height, width = run["synthetic_size"]
    return model, (int(height), int(width)), model.config.num_frames


def is_demo_bundle(directory: Path) -> bool:
    """Whether `directory` holds a demo bundle (text encoder weights kept outside, see `bifit.assets`)."""
    try:
        return json.loads((directory / "config.json").read_text()).get("text_encoder_weights") == "external"
    except (OSError, ValueError, AttributeError):
        return False


def pick_expressions(clip: SyntheticClip, rng: np.random.Generator) -> list[tuple[int, str]]:
    """One (object index, expression) per object, drawn as the synthetic training data draws them."""
    from ..data.synthetic import pick_expression

    return [(index, pick_expression(rng, obj)) for index, obj in enumerate(clip.objects)]


def score_masks(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Mean J and mean F over frames of bool masks [T, H, W] (DAVIS-2017 toolkit measures)."""
    from ..evaluation import contour_accuracy, region_similarity

    j = [region_similarity(g, p) for g, p in zip(gt, pred)]
    f = [contour_accuracy(g, p) for g, p in zip(gt, pred)]
    return float(np.mean(j)), float(np.mean(f))


def render_overlay(
    frame: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    expressions: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    short_side: int = DISPLAY_SHORT_SIDE,
) -> np.ndarray:
    """One overlay frame, enlarged, with a colour legend of the expressions underneath.

    Args:
        frame: uint8 [H, W, 3] RGB.
        masks: bool [E, H, W]; an empty mask gets no box (the object is not visible).
        boxes: float [E, 4] (x1, y1, x2, y2) pixels of `frame`.
        expressions: E texts for the legend; colors: E RGB colours.
        short_side: the frame is enlarged (never shrunk) so its shorter side is at least this.

    Returns:
        uint8 [H * s + legend, W * s, 3] with s = max(1, short_side / min(H, W)).
    """
    from PIL import Image, ImageDraw, ImageFont

    from ..inference.visualize import overlay_masks

    height, width = frame.shape[:2]
    scale = max(1.0, short_side / min(height, width))
    size = (round(width * scale), round(height * scale))
    big = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
    big_masks = np.stack([np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks])
    shown = [i for i, m in enumerate(masks) if m.any()]
    image = overlay_masks(
        big, big_masks[shown], boxes[shown] * scale if shown else None, [colors[i] for i in shown]
    ) if shown else big
    legend = Image.new("RGB", (size[0], LEGEND_LINE * len(expressions) + 4), (24, 24, 24))
    draw = ImageDraw.Draw(legend)
    font = ImageFont.load_default(size=LEGEND_LINE - 4)
    for i, (text, color) in enumerate(zip(expressions, colors)):
        top = 2 + i * LEGEND_LINE
        draw.rectangle((4, top + 3, 13, top + 12), fill=tuple(color))
        draw.text((18, top + 1), text, fill=(235, 235, 235), font=font)
    return np.concatenate([image, np.asarray(legend)], axis=0)


def _is_demo_file(name: str) -> bool:
    return name == RESULTS_NAME or re.fullmatch(r"clip\d+\.(mp4|gif)", name) is not None


def _output_names(clips: int) -> list[str]:
    return [RESULTS_NAME] + [f"clip{c}.{ext}" for c in range(clips) for ext in ("mp4", "gif")]


def _writable(path: Path) -> Path:
    """`path`, made ready to be written: a link there is removed as a link (written through, it would
    change a file outside the output folder)."""
    if path.is_symlink():
        with writing(path, "replace the link"):
            path.unlink()
    return path


def _check_output(output: Path, overwrite: bool, clips: int) -> set[str]:
    """Refuse a directory holding files that no earlier demo wrote (unless `overwrite`), or a folder
    where this run writes a file.

    Returns:
        the overlay files an earlier demo listed in its results (to delete if this run does not
        rewrite them, so that no stale clip stays behind).
    """
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output {output} exists and is not a directory")
    if not output.is_dir():
        return set()
    for name in _output_names(clips):
        if (output / name).is_dir() and not (output / name).is_symlink():
            raise FileExistsError(f"{output / name} is a folder, not an output of bifit demo; move it away or "
                                  "choose another --output")
    try:
        previous = json.loads((output / RESULTS_NAME).read_text())
        ours = isinstance(previous, dict) and previous.get("command") == COMMAND_TAG
    except (OSError, ValueError):
        previous, ours = None, False
    foreign = sorted(p.name for p in output.iterdir() if not (ours and _is_demo_file(p.name)))
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"output directory {output} holds files that bifit demo did not write ({shown}); "
            "choose another --output or pass --overwrite"
        )
    if not ours:
        return set()
    listed = [c.get(k) for c in previous.get("clips", []) if isinstance(c, dict) for k in ("mp4", "gif")]
    return {n for n in listed if isinstance(n, str) and _is_demo_file(n) and n != RESULTS_NAME}


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from ..data.synthetic import SceneConfig, generate_clip
    from ..inference.predictor import Segmenter
    from ..inference.visualize import GifWriter, Mp4Writer, color_palette

    if args.clips < 1:
        raise ValueError(f"--clips must be at least 1, got {args.clips}")
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    stale = _check_output(args.output, args.overwrite, args.clips)

    start = time.perf_counter()
    hf_logging.disable_progress_bar()
    model, frame_size, train_frames = load_model_for_demo(args.checkpoint, args.device)
    segmenter = Segmenter(model, short_side=None)
    scene = SceneConfig(num_frames=args.frames or train_frames, size=frame_size)
    make_dirs(args.output)

    scores: list[ExpressionScore] = []
    clips_json = []
    for c in range(args.clips):
        rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(c,)))
        clip = generate_clip(rng, scene)
        picked = pick_expressions(clip, rng)
        expressions = [text for _, text in picked]
        result = segmenter.segment(clip.frames, expressions)
        colors = color_palette(len(expressions))
        entries = []
        for (obj, text), res, color in zip(picked, result, colors):
            j, f = score_masks(clip.objects[obj].masks, res.masks)
            scores.append(ExpressionScore(c, text, obj, j, f))
            entries.append({"expression": text, "object": obj, "J": j, "F": f, "J&F": (j + f) / 2.0,
                            "color": "#{:02x}{:02x}{:02x}".format(*color),
                            "mean_score": float(res.scores.mean())})
        masks = np.stack([r.masks for r in result], axis=1)  # [T, E, H, W]
        boxes = np.stack([r.boxes for r in result], axis=1)  # [T, E, 4]
        mp4, gif = _writable(args.output / f"clip{c}.mp4"), _writable(args.output / f"clip{c}.gif")
        with Mp4Writer(mp4, OVERLAY_FPS) as video, GifWriter(gif, OVERLAY_FPS, max_side=None) as animation:
            for t, frame in enumerate(clip.frames):
                image = render_overlay(frame, masks[t], boxes[t], expressions, colors)
                video.write(image)
                animation.write(image)
        clips_json.append({"clip": c, "mp4": mp4.name, "gif": gif.name, "expressions": entries})

    j_mean = float(np.mean([s.j for s in scores]))
    f_mean = float(np.mean([s.f for s in scores]))
    seconds = time.perf_counter() - start
    print(format_table(scores))
    print(f"J&F {(j_mean + f_mean) / 2:.3f} (J {j_mean:.3f}, F {f_mean:.3f}) over {len(scores)} expressions "
          f"in {args.clips} clips; model loaded, clips segmented and scored in {seconds:.1f} s on {segmenter.device} ({torch.get_num_threads()} threads)")
    print(f"overlays: {args.output}/clip0.gif ... clip{args.clips - 1}.gif (and .mp4)")
    summary = {
        "command": COMMAND_TAG,
        "checkpoint": str(args.checkpoint) if args.checkpoint else "bundled demo model",
        "seed": args.seed,
        "frame_size": list(frame_size),
        "num_frames": scene.num_frames,
        "J": j_mean,
        "F": f_mean,
        "J&F": (j_mean + f_mean) / 2.0,
        "seconds": seconds,
        "clips": clips_json,
    }
    write_text(_writable(args.output / RESULTS_NAME), json.dumps(summary, indent=2) + "\n")
    for name in stale - {n for c in clips_json for n in (c["mp4"], c["gif"])}:
        path = args.output / name
        if path.is_symlink() or path.is_file():
            with writing(path, "remove the stale overlay"):
                path.unlink()
    return 0


def format_table(scores: Sequence[ExpressionScore]) -> str:
    """A plain-text table: one row per expression, J / F / J&F in [0, 1]."""
    width = max([len("expression")] + [len(s.expression) for s in scores])
    lines = [f"clip  {'expression':<{width}}      J      F    J&F"]
    lines += [f"{s.clip:>4}  {s.expression:<{width}}  {s.j:.3f}  {s.f:.3f}  {s.jf:.3f}" for s in scores]
    return "\n".join(lines)
