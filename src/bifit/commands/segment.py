"""`bifit segment`: masks, overlays and a JSON summary for referring expressions in a video."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

from ..outputs import make_dirs, write_text, writing
from .arguments import add_command, add_max_long_side, add_model_arguments

#: Frame rate of the overlays for inputs that have none (frame folders, images).
DEFAULT_FPS = 10.0
SUMMARY_NAME = "summary.json"
OVERLAY_MP4 = "overlay.mp4"
OVERLAY_GIF = "overlay.gif"
BUNDLED_MODEL_NOTE = (
    "note: no --checkpoint given, so the bundled demo model is used; it knows only the synthetic world of "
    "coloured shapes it was trained on, not real videos (pass --checkpoint with a released model for those)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "segment", run)
    parser.add_argument("video", type=Path, help="video file (mp4, avi, webm, mov, ...), folder of frames, or image")
    parser.add_argument("--text", "-t", action="append", required=True, metavar="EXPRESSION",
                        help="referring expression; repeat for several objects")
    add_model_arguments(parser, "bifit checkpoint directory or official .pth (default: the bundled demo model)")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="output directory (default: <video name>_bifit beside the current directory)")
    parser.add_argument("--clip-length", type=int, default=None, metavar="N",
                        help="process the video in clips of N frames so memory stays flat on long videos "
                        "(default: the whole video at once, as the official inference)")
    parser.add_argument("--frame-stride", type=int, default=1, metavar="K", help="segment every K-th frame (default 1)")
    parser.add_argument("--short-side", type=int, default=None, metavar="PX",
                        help="resize frames so their shorter side is PX before the model (default: the official "
                        "360, or the training frames' size for the bundled demo model)")
    add_max_long_side(parser)
    parser.add_argument("--threshold", type=float, default=0.5, help="mask probability threshold (default 0.5)")
    parser.add_argument("--fast", action="store_true",
                        help="fast inference: bfloat16 matrix products where the hardware has them "
                        "(masks differ from the exact path in a few boundary pixels; see the README)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace earlier bifit outputs in an output directory that is not empty")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def slugify(text: str, max_length: int = 40) -> str:
    """A file-name-safe version of an expression: lowercase words joined by '_'."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug[:max_length].rstrip("_") or "expression"


#: The per-expression folders `bifit segment` writes: "<index>_<slug>" (see `slugify`).
_EXPRESSION_DIR = re.compile(r"\d+_[a-z0-9_]+")
#: The files it writes beside them.
_FILES = (SUMMARY_NAME, OVERLAY_MP4, OVERLAY_GIF)


def _check_output(output: Path, overwrite: bool, new_dirs: list[str]) -> None:
    """Refuse an output that is not a directory, or not empty without `overwrite`, or holding, under a name
    this run would replace, something bifit segment did not write (see `_replaceable`)."""
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"output {output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output directory {output} already exists and is not empty; choose another --output or pass "
                "--overwrite to replace bifit's outputs in it"
            )
        _replaceable(output, new_dirs)


def _previous_dirs(output: Path) -> list[str]:
    """The expression folders an earlier run's summary lists, keeping only names bifit itself derives.

    The summary is a file in the user's folder and may be edited: "..", "", absolute paths, or
    the name of a user's own file are never taken from it.
    """
    try:
        summary = json.loads((output / SUMMARY_NAME).read_text())
        entries = summary.get("expressions", [])
        names = [e.get("directory") for e in entries if isinstance(e, dict)]
    except (OSError, ValueError, TypeError, AttributeError):
        return []  # no summary of ours: only the names this run writes are replaced
    return [n for n in names if isinstance(n, str) and _EXPRESSION_DIR.fullmatch(n)]


def _foreign_content(path: Path) -> Path | None:
    """The first thing in the output entry `path` that bifit segment does not write there, else None.

    Ours: a link (removed as a link, never followed); summary.json / overlay.mp4 / overlay.gif as
    files; an expression folder holding nothing but `masks/` with `.png` files in it.
    """
    if path.is_symlink():
        return None
    if path.name in _FILES:
        return None if path.is_file() else path
    if not path.is_dir():
        return path
    for entry in path.iterdir():
        if entry.name != "masks":
            return entry
    masks = path / "masks"
    if masks.is_symlink() or not masks.exists():
        return None
    if not masks.is_dir():
        return masks
    for entry in masks.iterdir():
        if entry.suffix != ".png" or (entry.is_dir() and not entry.is_symlink()):
            return entry
    return None


def _replaceable(output: Path, new_dirs: list[str]) -> list[Path]:
    """Entries of `output` that `--overwrite` removes: summary.json, overlay.mp4, overlay.gif and the
    expression folders this run writes or the earlier summary lists, all direct children of
    `output`, each only if it holds nothing but what bifit segment writes.

    Raises:
        FileExistsError: naming the first entry that holds something else.
    """
    paths = []
    for name in sorted({*_FILES, *new_dirs, *_previous_dirs(output)}):
        path = output / name
        if not (path.exists() or path.is_symlink()):
            continue
        foreign = _foreign_content(path)
        if foreign is not None:
            raise FileExistsError(
                f"{foreign} is not an output of bifit segment, so --overwrite leaves it alone; "
                "move it away or choose another --output"
            )
        paths.append(path)
    return paths


def _remove_output(path: Path) -> None:
    """Remove one entry that `_replaceable` accepted: a link or file is unlinked, an expression folder
    emptied of its mask PNGs and removed. Nothing is followed through a link, and a folder that
    gained other files since the check is left in place (rmdir fails)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    masks = path / "masks"
    if masks.is_symlink():
        masks.unlink()
    elif masks.is_dir():
        for png in masks.glob("*.png"):
            png.unlink()
        masks.rmdir()
    path.rmdir()


def _make_temporary_folder(output: Path) -> tuple[Path, list[Path]]:
    """A private temporary folder beside `output` (the same file system, so that the finished outputs are
    renamed into place), and the missing parent folders made for it, deepest first.

    Raises:
        OutputError: the location cannot be written (read-only, full, a file in the way), naming it.
    """
    made = []
    for folder in [output.parent, *output.parent.parents]:
        if folder.exists():
            break
        made.append(folder)
    with writing(output.parent, "create a temporary folder in"):
        output.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent)), made


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run made (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _move_into_place(tmp: Path, output: Path, new_dirs: list[str]) -> None:
    """Publish the finished outputs: rename the whole directory, or replace our entries in an existing one."""
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    if not output.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(output)
        return
    for old in _replaceable(output, new_dirs):
        _remove_output(old)
    for entry in tmp.iterdir():
        entry.rename(output / entry.name)
    tmp.rmdir()


def run(args: argparse.Namespace) -> int:
    """segment the objects that sentences describe in a video, a folder of frames or an image

    Segment what each --text describes. Writes, under --output: <index>_<slug>/masks/<frame>.png per
    expression, overlay.mp4 and overlay.gif (all expressions in distinct colours) and summary.json (per
    expression and frame: score, box, mask area).
    """
    import sys

    from tqdm.auto import tqdm

    from ..assets import checkpoint_short_side, default_checkpoint
    from ..inference.core import check_count
    from ..inference.predictor import Segmenter, check_expressions
    from ..inference.protocols import save_mask_png
    from ..inference.visualize import GifWriter, Mp4Writer, color_palette, display_scale, render_overlay

    expressions = check_expressions(args.text)
    check_count(args.clip_length, "--clip-length")
    if args.frame_stride < 1:
        raise ValueError(f"--frame-stride must be >= 1, got {args.frame_stride}")
    if args.max_long_side < 1:
        raise ValueError(f"--max-long-side must be >= 1, got {args.max_long_side}")
    output = args.output if args.output is not None else Path(f"{args.video.stem or 'video'}_bifit")
    dirs = [f"{i}_{slugify(text)}" for i, text in enumerate(expressions)]
    _check_output(output, args.overwrite, dirs)
    if not args.video.exists():
        raise FileNotFoundError(f"input not found: {args.video}")
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint()
    if args.checkpoint is None:
        print(BUNDLED_MODEL_NOTE, file=sys.stderr)
    if args.short_side is None:
        args.short_side = checkpoint_short_side(checkpoint)

    segmenter = Segmenter(
        checkpoint, text_encoder=args.text_encoder, device=args.device, clip_length=args.clip_length,
        frame_stride=args.frame_stride, short_side=args.short_side, threshold=args.threshold,
        max_long_side=args.max_long_side, fast=args.fast,
    )
    # Before the model's pass, so that a location that cannot be written fails at once.
    tmp, made = _make_temporary_folder(output)
    published = False
    try:
        with segmenter.stream(args.video, expressions, progress=not args.quiet) as result:
            colors = color_palette(len(expressions))
            legend = [f"{i}: {text}" for i, text in enumerate(expressions)]
            scale = display_scale(*result.frame_size)
            fps = result.fps or DEFAULT_FPS
            per_frame: list[list[dict]] = [[] for _ in expressions]
            for d in dirs:
                make_dirs(tmp / d / "masks")
            with Mp4Writer(tmp / OVERLAY_MP4, fps) as mp4, GifWriter(tmp / OVERLAY_GIF, fps) as gif:
                frames = tqdm(result, total=result.num_frames, unit="frame", desc="writing", disable=args.quiet)
                for frame in frames:
                    for i, d in enumerate(dirs):
                        save_mask_png(frame.masks[i], tmp / d / "masks" / f"{frame.name}.png")
                        per_frame[i].append({
                            "frame": frame.name,
                            "score": round(float(frame.scores[i]), 6),
                            "box": [round(float(v), 2) for v in frame.boxes[i]],
                            "mask_area": int(frame.masks[i].sum()),
                        })
                    overlay = render_overlay(frame.frame, frame.masks, frame.boxes, colors, legend, scale)
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
            write_text(tmp / SUMMARY_NAME, json.dumps(summary, indent=1) + "\n")
            with writing(output, "move the finished outputs into"):
                _move_into_place(tmp, output, dirs)
            published = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not published:
            _remove_empty(made)
    for i, text in enumerate(expressions):
        areas = [f["mask_area"] for f in per_frame[i]]
        found = sum(a > 0 for a in areas)
        print(f"[{i}] {text!r}: object in {found}/{len(areas)} frames -> {output / dirs[i] / 'masks'}")
    print(f"overlays: {output / OVERLAY_MP4}, {output / OVERLAY_GIF}; summary: {output / SUMMARY_NAME}")
    return 0
