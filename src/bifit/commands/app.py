"""`bifit app`: the web demo (Gradio, optional extra `app`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..app import DEFAULT_MAX_UPLOAD_MB
from .arguments import add_command, add_max_long_side, add_model_arguments

if TYPE_CHECKING:
    from ..inference.predictor import Segmenter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "app", run)
    add_model_arguments(parser, "bifit checkpoint directory, demo bundle or official .pth (default: the bundled demo model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument("--short-side", type=int, default=None, metavar="PX",
                        help="resize frames so their shorter side is PX (default: the demo model's training frames, "
                        "360 for other checkpoints as the official inference)")
    add_max_long_side(parser)
    parser.add_argument("--clip-length", type=int, default=None, metavar="N",
                        help="process videos in clips of N frames so memory stays flat (default: whole videos)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                        help=f"refuse uploads larger than MB megabytes (default {DEFAULT_MAX_UPLOAD_MB})")


def build_segmenter(args: argparse.Namespace) -> tuple[Segmenter, str]:
    """(Segmenter, description of the model) for the parsed arguments."""
    from ..assets import checkpoint_short_side, default_checkpoint
    from ..inference.predictor import Segmenter

    bundled = args.checkpoint is None
    checkpoint = default_checkpoint() if bundled else args.checkpoint
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    segmenter = Segmenter(
        checkpoint, text_encoder=args.text_encoder, device=args.device,
        short_side=args.short_side or checkpoint_short_side(checkpoint), clip_length=args.clip_length,
        max_long_side=args.max_long_side,
    )
    if bundled:
        about = ("The bundled demo model knows only the synthetic clips it was trained on: coloured circles, squares "
                 "and triangles that move. Try the example; for real videos pass `--checkpoint` with a released model.")
    else:
        about = f"Model: `{checkpoint.name}`."
    return segmenter, about


def run(args: argparse.Namespace) -> int:
    """serve the web demo: upload a video, type expressions, see the segmentation (needs bifit[app])

    Serve a Gradio page where one uploads a video or picks the bundled example, types referring expressions
    (one per line) and sees the overlay video and per-expression results. Needs the optional extra:
    pip install 'bifit[app]'.
    """
    from ..cli import CommandError

    try:
        import gradio  # noqa: F401 - only checking that the optional extra is installed
    except ImportError:
        raise CommandError("the web demo needs Gradio: pip install 'bifit[app]'") from None
    from ..app import serve
    from ..assets import example_expressions, example_video

    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port must lie in 1..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    segmenter, about = build_segmenter(args)
    try:
        example = (example_video(), example_expressions())
    except FileNotFoundError:
        example = None
    app = serve(segmenter, host=args.host, port=args.port, example=example, description=about, block=False,
                max_upload_mb=args.max_upload_mb)
    print(f"bifit app: serving on {app.local_url} (Ctrl+C to stop)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
    return 0
