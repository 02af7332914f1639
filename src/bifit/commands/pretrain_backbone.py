"""`bifit pretrain-backbone`: pretrain a training preset's ResNet on synthetic attribute labels.

    bifit pretrain-backbone --preset synthetic_tiny --output runs/backbone.pth
    bifit train --preset synthetic_tiny --backbone-weights runs/backbone.pth --output-dir runs/tiny

The stand-in for an ImageNet backbone on the synthetic clips (see
`bifit.training.backbone_pretraining`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from .arguments import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..training.config import BackbonePretrainingConfig

    # The fields' defaults, without building (and validating) a config just for the help texts.
    defaults = argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(BackbonePretrainingConfig)})
    parser = add_command(subparsers, "pretrain-backbone", run)
    parser.add_argument("--preset", default="synthetic_tiny", help="training preset whose backbone to pretrain")
    parser.add_argument("--output", required=True, type=Path, help="the state dict to write (.pth)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimiser steps (default {defaults.steps})")
    parser.add_argument(
        "--clips-per-step", type=int, default=defaults.clips_per_step,
        help=f"synthetic clips per step (default {defaults.clips_per_step})",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"AdamW learning rate (default {defaults.lr})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"seed of clips and weights (default {defaults.seed})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N or mps")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """pretrain a preset's backbone on synthetic frames (per-pixel shape, colour and size)

    Pretrain the ResNet of a training preset on synthetic frames, labelling every pixel with the shape,
    colour and size of its object, and write it as a torchvision state dict for `bifit train
    --backbone-weights`. A JSON summary goes next to it (OUTPUT.json).
    """
    from tqdm.auto import tqdm

    from ..modeling.checkpoint import atomic_save
    from ..training.backbone_pretraining import pretrain_backbone
    from ..training.config import BackbonePretrainingConfig, get_training_preset

    output: Path = args.output
    summary_path = output.with_name(output.name + ".json")
    if output.is_dir():
        raise ValueError(f"--output must be a file path, {output} is a directory")
    existing = [p for p in (output, summary_path) if p.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    training = get_training_preset(args.preset)
    config = BackbonePretrainingConfig(
        steps=args.steps,
        clips_per_step=args.clips_per_step,
        num_frames=training.num_frames,
        size=tuple(training.synthetic_size),
        lr=args.lr,
        seed=args.seed,
    )
    last: dict[str, float] = {}
    bar = tqdm(total=config.steps, desc="pretrain backbone", unit="step", disable=args.no_progress)

    def on_step(step: int, loss: float, accuracy: dict[str, float]) -> None:
        last.update(loss=loss, **accuracy)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", shape_s8=f"{accuracy['shape_s8']:.2f}")

    start = time.time()
    try:
        state = pretrain_backbone(training.model, config, device=args.device, on_step=on_step)
    finally:
        bar.close()
    atomic_save(state, output)
    summary = {
        "preset": args.preset,
        "backbone": training.model.backbone,
        "norm": training.model.backbone_norm,
        "config": {**dataclasses.asdict(config), "size": list(config.size)},
        "minutes": round((time.time() - start) / 60, 2),
        "last_step": {k: round(v, 4) for k, v in last.items()},
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    accuracy = ", ".join(f"{k} {v:.2f}" for k, v in last.items() if k.endswith("_s8"))
    print(f"pretrained {config.steps} steps (last batch: loss {last['loss']:.3f}; stride-8 accuracy {accuracy}); "
          f"wrote {output}; train with: bifit train --preset {args.preset} --backbone-weights {output} ...")
    return 0
