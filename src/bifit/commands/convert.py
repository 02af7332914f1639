"""`bifit convert`: an official BIFIT `.pth` into our format (safetensors + JSON config)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "convert", run)
    parser.add_argument("checkpoint", type=Path, help="official .pth file ({'model': state_dict})")
    parser.add_argument("output", type=Path, help="directory to write")
    parser.add_argument(
        "--text-encoder", default="roberta-base",
        help="Hugging Face id or local directory of the text encoder's tokenizer and config (default: roberta-base)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it is a bifit checkpoint directory (nothing else is ever replaced)")


def run(args: argparse.Namespace) -> int:
    """convert an official BIFIT checkpoint (.pth) into a bifit checkpoint directory

    Read an official BIFIT checkpoint strictly (every tensor used, every shape checked) and write
    DIR/{config.json, model.safetensors, text_encoder/}.
    """
    from ..modeling.checkpoint import check_overwritable, load_official_checkpoint, save_pretrained

    if args.output.exists() or args.output.is_symlink():
        if not args.overwrite:
            raise FileExistsError(f"{args.output} already exists; pass --overwrite to replace it")
        check_overwritable(args.output)  # before the minutes of loading, not after
    model = load_official_checkpoint(args.checkpoint, text_encoder=args.text_encoder)
    target = save_pretrained(model, args.output, overwrite=args.overwrite)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {target} ({n / 1e6:.1f} M parameters, config {model.config.backbone})")
    return 0
