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
from .arguments import add_command, add_model_arguments

if TYPE_CHECKING:
    from ..data.synthetic import SyntheticClip

RESULTS_NAME = "results.json"
COMMAND_TAG = "bifit demo"
DEFAULT_OUTPUT = Path("bifit_demo")
# Frames per clip: long enough to watch the shapes move (the model was trained on shorter clips; its
# scores do not depend on the clip length).
DEMO_FRAMES = 12
# Frames per second of the overlays: a 12-frame clip plays in 2 s.
OVERLAY_FPS = 6.0
# Clips of a default run. Eight (about twenty expressions) give a steadier figure than four, which one
# hard clip could sway: 0.838-0.874 over seeds 0-3 against 0.842 on 400 held-out clips, where four
# clips of seed 0 scored 0.799.
DEMO_CLIPS = 8


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "demo", run)
    parser.add_argument("--output", "-o", type=Path, default=DEFAULT_OUTPUT,
                        help=f"output directory (default: ./{DEFAULT_OUTPUT})")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an output directory that holds files other than an earlier demo's")
    parser.add_argument("--clips", type=int, default=DEMO_CLIPS, help=f"number of synthetic clips (default {DEMO_CLIPS})")
    parser.add_argument("--frames", type=int, default=DEMO_FRAMES,
                        help=f"frames per clip (default {DEMO_FRAMES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips and expressions (default 0)")
    add_model_arguments(parser, "a demo bundle or a `bifit train` final/ directory (default: the bundled model)",
                        text_encoder=False)


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




def pick_expressions(clip: SyntheticClip, rng: np.random.Generator) -> list[tuple[int, str]]:
    """One (object index, expression) per object, drawn as the synthetic training data draws them."""
    from ..data.synthetic import pick_expression

    return [(index, pick_expression(rng, obj)) for index, obj in enumerate(clip.objects)]


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
    """segment synthetic clips with the bundled model and score it against their ground truth

    Generate synthetic referring clips (moving coloured shapes), segment one expression per object with the
    bundled demo model, print J, F and J&F per expression, and write clip<N>.mp4 / clip<N>.gif overlays and
    results.json into --output.
    """
    import torch
    from ..assets import demo_info, load_demo_model, load_synthetic_run
    from ..data.synthetic import COLOURS, SceneConfig, generate_clip
    from ..devices import resolve_device
    from ..evaluation import mean_j_and_f
    from ..inference.predictor import Segmenter
    from ..inference.visualize import GifWriter, Mp4Writer, color_palette, display_scale, render_overlay
    from ..modeling.checkpoint import is_demo_bundle

    if args.clips < 1:
        raise ValueError(f"--clips must be at least 1, got {args.clips}")
    if args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    stale = _check_output(args.output, args.overwrite, args.clips)

    start = time.perf_counter()
    device = resolve_device(args.device)
    if args.checkpoint is None or is_demo_bundle(args.checkpoint):
        frame_size = demo_info(args.checkpoint).frame_size
        model = load_demo_model(args.checkpoint, device)
    else:
        model, frame_size = load_synthetic_run(args.checkpoint, device)
    segmenter = Segmenter(model, short_side=None)
    scene = SceneConfig(num_frames=args.frames, size=frame_size)
    scale = display_scale(*frame_size)
    # Mask colours unlike those of the shapes, so that every mask stands out from what it covers.
    shape_colours = [COLOURS[name] for name in scene.colours]
    make_dirs(args.output)

    scores: list[ExpressionScore] = []
    clips_json = []
    for c in range(args.clips):
        rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(c,)))
        clip = generate_clip(rng, scene)
        picked = pick_expressions(clip, rng)
        expressions = [text for _, text in picked]
        result = segmenter.segment(clip.frames, expressions)
        colors = color_palette(len(expressions), avoid=shape_colours)
        entries = []
        for (obj, text), res, color in zip(picked, result, colors):
            j, f = mean_j_and_f(clip.objects[obj].masks, res.masks)
            scores.append(ExpressionScore(c, text, obj, j, f))
            entries.append({"expression": text, "object": obj, "J": j, "F": f, "J&F": (j + f) / 2.0,
                            "color": "#{:02x}{:02x}{:02x}".format(*color),
                            "mean_score": float(res.scores.mean())})
        masks = np.stack([r.masks for r in result], axis=1)  # [T, E, H, W]
        boxes = np.stack([r.boxes for r in result], axis=1)  # [T, E, 4]
        mp4, gif = _writable(args.output / f"clip{c}.mp4"), _writable(args.output / f"clip{c}.gif")
        with Mp4Writer(mp4, OVERLAY_FPS) as video, GifWriter(gif, OVERLAY_FPS, max_side=None) as animation:
            for t, frame in enumerate(clip.frames):
                image = render_overlay(frame, masks[t], boxes[t], colors, legend=expressions, scale=scale)
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
