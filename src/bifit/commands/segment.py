"""`bifit segment`: masks, overlays and a JSON summary for referring expressions in a video."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

#: Frame rate of the overlays for inputs that have none (frame folders, images).
DEFAULT_FPS = 10.0
SUMMARY_NAME = "summary.json"
OVERLAY_MP4 = "overlay.mp4"
OVERLAY_GIF = "overlay.gif"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment the objects that sentences describe in a video, a folder of frames or an image",
        description="Segment what each --text describes. Writes, under --output: <index>_<slug>/masks/<frame>.png "
        "per expression, overlay.mp4 and overlay.gif (all expressions in distinct colours) and summary.json "
        "(per expression and frame: score, box, mask area).",
    )
    parser.add_argument("video", type=Path, help="video file (mp4, avi, webm, mov, ...), folder of frames, or image")
    parser.add_argument("--text", "-t", action="append", required=True, metavar="EXPRESSION",
                        help="referring expression; repeat for several objects")
    parser.add_argument("--checkpoint", "-c", type=Path, default=None,
                        help="bifit checkpoint directory or official .pth (default: the bundled demo model)")
    parser.add_argument("--text-encoder", default=None,
                        help="for an official .pth: Hugging Face id or directory of its text encoder (default roberta-base)")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="output directory (default: <video name>_bifit beside the current directory)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    parser.add_argument("--clip-length", type=int, default=None, metavar="N",
                        help="process the video in clips of N frames so memory stays flat on long videos "
                        "(default: the whole video at once, as the official inference)")
    parser.add_argument("--frame-stride", type=int, default=1, metavar="K", help="segment every K-th frame (default 1)")
    parser.add_argument("--short-side", type=int, default=None, metavar="PX",
                        help="resize frames so their shorter side is PX before the model (default: the official "
                        "360, or the training frames' size for the bundled demo model)")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold (default 0.5)")
    parser.add_argument("--fast", action="store_true",
                        help="fast inference: bfloat16 matrix products where the hardware has them "
                        "(masks differ from the exact path in a few boundary pixels; see the README)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace earlier bifit outputs in an output directory that is not empty")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def slugify(text: str, max_length: int = 40) -> str:
    """A file-name-safe version of an expression: lowercase words joined by '_'."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug[:max_length].rstrip("_") or "expression"


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output directory {output} already exists and is not empty; choose another --output or pass "
            "--overwrite to replace bifit's outputs in it"
        )


def _previous_outputs(output: Path) -> list[Path]:
    """What an earlier `bifit segment` wrote into `output` (from its summary), to be replaced."""
    paths = [output / SUMMARY_NAME, output / OVERLAY_MP4, output / OVERLAY_GIF]
    try:
        summary = json.loads((output / SUMMARY_NAME).read_text())
        paths += [output / Path(e["directory"]).name for e in summary.get("expressions", [])]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # no summary of ours: only the fixed names are ours to replace
    return paths


def _move_into_place(tmp: Path, output: Path) -> None:
    """Publish the finished outputs: rename the whole directory, or replace our entries in an existing one."""
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    if not output.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(output)
        return
    for old in _previous_outputs(output) + [output / p.name for p in tmp.iterdir()]:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for entry in tmp.iterdir():
        entry.rename(output / entry.name)
    tmp.rmdir()


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from ..inference.predictor import Segmenter, check_expressions, checkpoint_short_side, default_checkpoint
    from ..inference.visualize import GifWriter, Mp4Writer, color_palette, overlay_masks

    expressions = check_expressions(args.text)
    if args.clip_length is not None and args.clip_length < 1:
        raise ValueError(f"--clip-length must be a positive number of frames, got {args.clip_length}")
    if args.frame_stride < 1:
        raise ValueError(f"--frame-stride must be >= 1, got {args.frame_stride}")
    output = args.output if args.output is not None else Path(f"{args.video.stem or 'video'}_bifit")
    _check_output(output, args.overwrite)
    if not args.video.exists():
        raise FileNotFoundError(f"input not found: {args.video}")
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint()
    if args.short_side is None:
        args.short_side = checkpoint_short_side(checkpoint)

    segmenter = Segmenter(
        checkpoint, text_encoder=args.text_encoder, device=args.device, clip_length=args.clip_length,
        frame_stride=args.frame_stride, short_side=args.short_side, threshold=args.threshold, fast=args.fast,
    )
    with segmenter.stream(args.video, expressions, progress=not args.quiet) as result:
        dirs = [f"{i}_{slugify(text)}" for i, text in enumerate(expressions)]
        colors = color_palette(len(expressions))
        labels = [str(i) for i in range(len(expressions))]
        fps = result.fps or DEFAULT_FPS
        per_frame: list[list[dict]] = [[] for _ in expressions]
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        try:
            for d in dirs:
                (tmp / d / "masks").mkdir(parents=True)
            with Mp4Writer(tmp / OVERLAY_MP4, fps) as mp4, GifWriter(tmp / OVERLAY_GIF, fps) as gif:
                frames = tqdm(result, total=result.num_frames, unit="frame", desc="writing", disable=args.quiet)
                for frame in frames:
                    for i, d in enumerate(dirs):
                        Image.fromarray(frame.masks[i].astype(np.uint8) * 255).save(tmp / d / "masks" / f"{frame.name}.png")
                        per_frame[i].append({
                            "frame": frame.name,
                            "score": round(float(frame.scores[i]), 6),
                            "box": [round(float(v), 2) for v in frame.boxes[i]],
                            "mask_area": int(frame.masks[i].sum()),
                        })
                    overlay = overlay_masks(frame.frame, frame.masks, frame.boxes, colors, labels)
                    mp4.write(overlay)
                    gif.write(overlay)
            summary = {
                "input": str(args.video),
                "checkpoint": str(checkpoint),
                "num_frames": result.num_frames,
                "frame_size": list(result.frame_size),
                "fps": fps,
                "frame_stride": args.frame_stride,
                "clip_length": args.clip_length,
                "short_side": args.short_side,
                "threshold": args.threshold,
                "fast": args.fast,
                "expressions": [
                    {
                        "index": i,
                        "text": text,
                        "directory": dirs[i],
                        "color": list(colors[i]),
                        "query": int(result.queries[i, 0]),
                        "query_score": round(float(result.query_scores[i].max()), 6),
                        "frames": per_frame[i],
                    }
                    for i, text in enumerate(expressions)
                ],
            }
            (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=1) + "\n")
            _move_into_place(tmp, output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for i, text in enumerate(expressions):
        areas = [f["mask_area"] for f in per_frame[i]]
        found = sum(a > 0 for a in areas)
        print(f"[{i}] {text!r}: object in {found}/{len(areas)} frames -> {output / dirs[i] / 'masks'}")
    print(f"overlays: {output / OVERLAY_MP4}, {output / OVERLAY_GIF}; summary: {output / SUMMARY_NAME}")
    return 0
