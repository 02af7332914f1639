"""`bifit train`: train BIFIT from a named recipe, on one process or under torchrun.

    bifit train --preset synthetic_tiny --output-dir runs/tiny
    torchrun --nproc_per_node=8 -m bifit train --preset ytvos_r50 --data-root data/ref-youtube-vos \\
        --output-dir runs/ytvos --text-encoder roberta-base --backbone-weights resnet50.pth

SIGTERM or SIGINT (a scheduler's preemption, torchrun's shutdown, Ctrl-C) stops after the current
optimiser step with a checkpoint and exit code 75; `--resume` continues from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..training.config import AMP_MODES, DATASETS, training_preset_names

    parser = add_command(subparsers, "train", run)
    parser.add_argument("--preset", required=True, help=f"training recipe: {', '.join(training_preset_names())}")
    parser.add_argument("--output-dir", required=True, type=Path, help="where logs, checkpoints and the model go")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUTPUT_DIR")
    parser.add_argument("--overwrite", action="store_true", help="delete a previous run in OUTPUT_DIR first")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--data", choices=DATASETS, help="training data (default: the preset's)")
    parser.add_argument("--data-root", help="dataset folder (all data but synthetic)")
    parser.add_argument("--text-encoder", help="Hugging Face id or local directory of the pretrained text encoder")
    parser.add_argument("--init-checkpoint", help="start from these weights: official .pth or bifit directory")
    parser.add_argument("--backbone-weights", help="torchvision ResNet state dict (.pth) for the backbone")
    parser.add_argument("--batch-size", type=int, help="clips per device per pass")
    parser.add_argument("--accum", type=int, help="passes per optimiser step (gradient accumulation)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float, help="main learning rate (the other groups keep theirs)")
    parser.add_argument("--num-workers", type=int, help="data-loading processes per rank")
    parser.add_argument("--device", help="auto (CUDA when available), cpu, cuda (GPU LOCAL_RANK), cuda:N or mps")
    parser.add_argument("--amp", choices=AMP_MODES, help="mixed precision on CUDA")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-every", type=int, help="checkpoint every N optimiser steps (0: per epoch)")
    parser.add_argument("--keep", type=int, help="checkpoints kept on disk")
    parser.add_argument("--log-every", type=int, help="metrics line every N optimiser steps")
    parser.add_argument(
        "--activation-checkpointing", action="store_const", const=True, default=None,
        help="less memory for a longer step: recompute the ResNet stages, encoder layers and FPN levels "
        "in the backward",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="any TrainingConfig or BifitConfig field (model.FIELD also works), value as JSON; repeatable",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# Command-line flag -> TrainingConfig field.
_FLAG_FIELDS = {
    "max_steps": "max_steps",
    "data": "data",
    "data_root": "data_root",
    "init_checkpoint": "init_checkpoint",
    "backbone_weights": "backbone_weights",
    "batch_size": "batch_size",
    "accum": "accum_steps",
    "epochs": "epochs",
    "lr": "lr",
    "num_workers": "num_workers",
    "device": "device",
    "amp": "amp",
    "seed": "seed",
    "save_every": "save_every",
    "keep": "keep_last",
    "log_every": "log_every",
    "activation_checkpointing": "activation_checkpointing",
}


def build_config(args: argparse.Namespace):  # noqa: ANN201 (TrainingConfig, imported lazily)
    """The TrainingConfig that the parsed arguments describe: preset, then --set, then flags."""
    from ..training.config import apply_overrides, get_training_preset

    config = apply_overrides(get_training_preset(args.preset), args.overrides)
    changes = {field: getattr(args, flag) for flag, field in _FLAG_FIELDS.items() if getattr(args, flag) is not None}
    for name in ("data_root", "init_checkpoint", "backbone_weights"):
        if name in changes and not Path(changes[name]).exists():
            raise FileNotFoundError(f"--{name.replace('_', '-')} not found: {changes[name]}")
    if args.text_encoder is not None:
        changes["model"] = config.model.replace(text_encoder=args.text_encoder)
    return config.replace(**changes)


def run(args: argparse.Namespace) -> int:
    """train a model from a training preset (official recipes, synthetic tiny model)

    Train BIFIT. Writes OUTPUT_DIR/{train_config.json, metrics.jsonl, checkpoints/, final/}; final/ loads
    with bifit.load_pretrained. Run under torchrun for several processes/GPUs. SIGTERM or SIGINT stops after
    the current step with a checkpoint and exit code 75; --resume continues.
    """
    from ..cli import EXIT_TRAINING_STOPPED
    from ..training.loop import train
    from ..training.preemption import TrainingInterrupted

    config = build_config(args)
    try:
        result = train(
            config, args.output_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
        )
    except TrainingInterrupted as stopped:
        if stopped.checkpoint is not None:  # rank 0 speaks for every rank
            print(f"bifit train: {stopped}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED
    if result.final_dir is not None:
        loss = result.last_metrics.get("loss")
        summary = f", last loss {loss:.4f}" if loss is not None else ""
        print(f"trained {result.step} steps{summary}; model in {result.final_dir} (load with bifit.load_pretrained)")
    return 0
