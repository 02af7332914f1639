"""What the command modules share: a subcommand made from its run function, and the arguments several
commands take. Free of torch, like the rest of argument parsing (`bifit --help` answers at once)."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from pathlib import Path

from ..data.frame_sizes import MAX_LONG_SIDE

DEVICE_HELP = "auto (default: CUDA when available), cpu, cuda, cuda:N or mps"
TEXT_ENCODER_HELP = "for an official .pth: Hugging Face id or directory of its text encoder (default roberta-base)"
MAX_LONG_SIDE_HELP = (
    "refuse frames whose model input (after resizing) has a longer side above PX pixels "
    f"(default {MAX_LONG_SIDE}: normal aspect ratios stay far below it; raise it for panoramas)"
)


def add_command(
    subparsers: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], **texts: str
) -> argparse.ArgumentParser:
    """The parser of subcommand `name`, which calls `run(args)`.

    The first paragraph of `run`'s docstring is the one-line help of the command list, the rest the
    description of the command's own `--help` (argparse folds the line breaks); `texts` (`help=`,
    `description=`) replace them where they are built at run time.
    """
    summary, _, details = inspect.cleandoc(run.__doc__ or "").partition("\n\n")
    texts = {"help": " ".join(summary.split()), "description": details or None, **texts}
    parser = subparsers.add_parser(name, **texts)
    parser.set_defaults(func=run)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser, checkpoint_help: str, text_encoder: bool = True) -> None:
    """`--checkpoint/-c` (default None: the bundled demo model), `--text-encoder` (if `text_encoder`) and
    `--device`, resolved by `bifit.devices.resolve_device` when the command runs."""
    parser.add_argument("--checkpoint", "-c", type=Path, default=None, help=checkpoint_help)
    if text_encoder:
        parser.add_argument("--text-encoder", default=None, help=TEXT_ENCODER_HELP)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_max_long_side(parser: argparse.ArgumentParser, help: str = MAX_LONG_SIDE_HELP) -> None:
    """`--max-long-side PX`: the limit that refuses absurd frame shapes before the model runs."""
    parser.add_argument("--max-long-side", type=int, default=MAX_LONG_SIDE, metavar="PX", help=help)
