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


# Exit codes: 0 done; 1 no command given; 2 a failure reported in one line (bad input, missing or
# unwritable files, a full disk, an unavailable device, ...); 75 (EX_TEMPFAIL) `bifit train` stopped by
# SIGTERM or SIGINT after saving a checkpoint, to be continued with --resume; 130 interrupted by Ctrl-C
# elsewhere. A programming error keeps its traceback (exit 1).
EXIT_ERROR = 2
EXIT_TRAINING_STOPPED = 75
EXIT_INTERRUPTED = 130


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
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = _known_error_message(exc)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        print(f"bifit {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def _known_error_message(exc: Exception) -> str | None:
    """One line for the failures a user can meet and act on; None for anything else (a bug)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        message = f"out of memory on the GPU ({str(exc).splitlines()[0] if str(exc) else 'no details'})"
    elif isinstance(exc, MemoryError):
        message = "out of memory" + (f" ({exc})" if str(exc) else "")
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        # Raised by the system: name the file and the reason, not "[Errno 28] ...".
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
        message = f"{target}: {exc.strerror}"
    elif isinstance(exc, (CommandError, ValueError, OSError, FloatingPointError)):
        # ValueError covers bifit's own CheckpointError and ExpressionError (and UnicodeError).
        message = str(exc) or type(exc).__name__
    else:
        return None
    return " ".join(message.splitlines())


if __name__ == "__main__":
    sys.exit(main())
