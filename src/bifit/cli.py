"""The `bifit` command. Each subcommand lives in `bifit.commands.<name>` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

# Imported lazily by name so that `bifit --help` stays fast and a subcommand's optional
# dependencies are needed only when it runs.
COMMANDS = ["demo", "segment", "train", "pretrain_backbone", "predict", "evaluate", "data", "convert", "app"]


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bifit",
        description="BIFIT referring video object segmentation: segment what a sentence describes in a video.",
    )
    parser.add_argument("--version", action="version", version=f"bifit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bifit.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bifit.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("bifit: interrupted", file=sys.stderr)
        return 130
    except (CommandError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"bifit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
