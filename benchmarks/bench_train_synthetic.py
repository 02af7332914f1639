"""Train a training preset (default `synthetic_tiny`) on synthetic clips and track J&F on held-out clips.

The run is cut into segments of `--eval-every` optimiser steps; after each one the trained model
(`<workdir>/final`) is evaluated on `--eval-clips` held-out synthetic clips (a data seed the
training never sees). Each segment resumes the previous one from its checkpoint, so the curve
comes from one ordinary training run. J and F are `bifit.evaluation.mean_j_and_f` (DAVIS
region similarity and contour accuracy averaged over the frames of a clip), then averaged over clips; J&F is their mean.
Inference follows the official one: the query with the highest mean score over frames, its mask
logits upsampled bilinearly from stride 4, thresholded at 0.5. Each evaluation also reports `landed`
(share of expressions whose mask overlaps the referred object most) and `hedged` (share whose mask
covers at least half of two or more objects), and `landed_alone`: for the expressions that state a single
attribute ("the circle", "the shape moving left"), the landed share per attribute (colour, shape, size,
position, motion), which tells what the model has learnt to ground. `stride4_ceiling` is what a perfect
stride-4 prediction would score on the same clips.

    PYTHONPATH=src python benchmarks/bench_train_synthetic.py --output bench_train.json --figure curve.png

Writes JSON: the config, the curve (loss per logged step, J&F per evaluation with the training
time spent so far) and the final numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bifit import load_pretrained
from bifit.data.collate import collate_fn
from bifit.data.synthetic import SyntheticRVOS
from bifit.data.targets import build_target
from bifit.data.normalization import normalize_frames
from bifit.inference.core import masks_from_logits, select_queries
from bifit.evaluation import mean_j_and_f
from bifit.training import apply_overrides, get_training_preset, train

HELDOUT_SEED = 1_000_003


def upsample_masks(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Mask logits [T, h, w] at stride 4 -> bool [T, height, width]: upsampled x4 to the padded canvas and
    cropped, as the official A2D inference."""
    h4, w4 = logits.shape[-2:]
    return masks_from_logits(logits, (4 * h4, 4 * w4))[:, :height, :width].numpy()


def grounding(pred: np.ndarray, objects: list[np.ndarray], referred: int) -> tuple[bool, bool]:
    """How a predicted clip mask relates to the clip's objects (bool [T, H, W] each).

    Returns (landed, hedged): the mask overlaps the referred object more (IoU over the clip) than any
    other, and it covers at least half of two or more objects.
    """
    ious = [np.logical_and(o, pred).sum() / max(1, np.logical_or(o, pred).sum()) for o in objects]
    landed = max(ious) > 0 and int(np.argmax(ious)) == referred
    covered = sum(np.logical_and(o, pred).sum() >= 0.5 * max(1, o.sum()) for o in objects)
    return bool(landed), covered >= 2


def attribute_kind(clip_object, expression: str) -> str | None:
    """The attribute an expression of `clip_object` states when it states only one (vertical and
    horizontal extremes count as "position"), else None."""
    descriptor = clip_object.descriptors[clip_object.expressions.index(expression)]
    if len(descriptor) != 1:
        return None
    name = descriptor[0][0]
    return "position" if name in ("vertical", "horizontal") else name


def stride4_ceiling(num_clips: int, num_frames: int, size: tuple[int, int]) -> dict:
    """J and F of ideal mask logits at stride 4 (the area share of each 4 x 4 cell, as logits) after the
    inference upsampling: what the held-out clips allow a perfect model at this resolution."""
    dataset = SyntheticRVOS(num_clips, num_frames=num_frames, size=size, seed=HELDOUT_SEED)
    j_scores, f_scores = [], []
    for index in range(num_clips):
        clip, referred, _ = dataset.sample(index)
        gt = clip.objects[referred].masks  # bool [T, H, W]
        share = F.avg_pool2d(torch.from_numpy(gt).float()[:, None], 4, ceil_mode=True)[:, 0]
        pred = upsample_masks(torch.logit(share.clamp(1e-4, 1 - 1e-4)), *gt.shape[-2:])
        j, f = mean_j_and_f(gt, pred)
        j_scores.append(j)
        f_scores.append(f)
    return {"J": float(np.mean(j_scores)), "F": float(np.mean(f_scores))}


@torch.no_grad()
def evaluate_jf(model_dir: Path, num_clips: int, num_frames: int, size: tuple[int, int], batch_size: int = 8) -> dict:
    """Mean J, F and J&F of the model in `model_dir` on `num_clips` held-out synthetic clips, the shares
    of expressions whose mask landed on the referred object or hedged over several, the landed
    share of single-attribute expressions per attribute (`landed_alone`)."""
    model = load_pretrained(model_dir)
    dataset = SyntheticRVOS(num_clips, num_frames=num_frames, size=size, seed=HELDOUT_SEED)
    j_scores, f_scores, landed, hedged = [], [], [], []
    landed_alone: dict[str, list[bool]] = {}
    for start in range(0, num_clips, batch_size):
        samples = [dataset.sample(i) for i in range(start, min(start + batch_size, num_clips))]
        items = [(normalize_frames(c.frames), build_target(c.objects[r].masks, text)) for c, r, text in samples]
        videos, captions, _ = collate_fn(items)
        out = model(videos, captions)
        best = select_queries(out["pred_logits"])  # [B]: one expression per clip
        for b, (clip, referred, text) in enumerate(samples):
            gt = clip.objects[referred].masks  # bool [T, H, W]
            pred = upsample_masks(out["pred_masks"][b, :, best[b]], *gt.shape[-2:])
            j, f = mean_j_and_f(gt, pred)
            j_scores.append(j)
            f_scores.append(f)
            outcome = grounding(pred, [o.masks for o in clip.objects], referred)
            landed.append(outcome[0])
            hedged.append(outcome[1])
            kind = attribute_kind(clip.objects[referred], text)
            if kind is not None:
                landed_alone.setdefault(kind, []).append(outcome[0])
    j, f = float(np.mean(j_scores)), float(np.mean(f_scores))
    return {
        "J": j, "F": f, "J&F": (j + f) / 2, "landed": float(np.mean(landed)), "hedged": float(np.mean(hedged)),
        "landed_alone": {kind: float(np.mean(v)) for kind, v in sorted(landed_alone.items())},
    }


def read_losses(metrics_path: Path) -> list[dict]:
    rows = []
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        rows.append({"step": record["step"], "loss": record["loss"], "lr": record["lr"]})
    return rows


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_jf) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses = result["loss_curve"]
    ax_loss.plot([r["step"] for r in losses], [r["loss"] for r in losses], lw=1)
    ax_loss.set_xlabel("optimiser step")
    ax_loss.set_ylabel("training loss (weighted total)")
    ax_loss.set_yscale("log")
    evals = result["jf_curve"]
    ax_jf.plot([e["train_minutes"] for e in evals], [e["J&F"] for e in evals], "o-", label="J&F")
    ax_jf.plot([e["train_minutes"] for e in evals], [e["J"] for e in evals], ".--", label="J")
    ax_jf.plot([e["train_minutes"] for e in evals], [e["F"] for e in evals], ".--", label="F")
    ax_jf.axhline(0.7, color="grey", lw=0.8, ls=":")
    ax_jf.set_xlabel("training time (min, 2 CPU cores)")
    ax_jf.set_ylabel("held-out score")
    ax_jf.set_ylim(0, 1)
    ax_jf.legend()
    fig.suptitle(f"{result['preset']} on synthetic clips")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="synthetic_tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path, default=Path("bench_train_run"))
    parser.add_argument("--eval-every", type=int, default=200, help="optimiser steps between evaluations")
    parser.add_argument("--eval-clips", type=int, default=200)
    parser.add_argument("--max-minutes", type=float, default=10.0, help="stop once training has taken this long")
    parser.add_argument("--output", type=Path, default=Path("bench_train_synthetic.json"))
    parser.add_argument("--figure", type=Path, default=None, help="also draw the curves into this PNG")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: on a small shared CPU, OpenMP threads spinning against other "
        "processes slow training down many times)",
    )
    args = parser.parse_args(argv)

    config = apply_overrides(get_training_preset(args.preset), args.overrides)
    torch.set_num_threads(args.threads)
    result = {
        "preset": args.preset,
        "overrides": args.overrides,
        "config": config.to_dict(),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "jf_curve": [],
        "stride4_ceiling": stride4_ceiling(args.eval_clips, config.num_frames, config.synthetic_size),
    }
    train_seconds = 0.0
    step, total = 0, None
    first = True
    while True:
        target = step + args.eval_every
        started = time.perf_counter()
        outcome = train(
            config.replace(max_steps=target), args.workdir, resume=not first, overwrite=first, progress=False
        )
        train_seconds += time.perf_counter() - started
        first = False
        if outcome.step == step:
            break  # the schedule has ended
        step = outcome.step
        scores = evaluate_jf(outcome.output_dir / "final", args.eval_clips, config.num_frames, config.synthetic_size)
        entry = {"step": step, "train_minutes": train_seconds / 60, **scores}
        result["jf_curve"].append(entry)
        print(json.dumps(entry), flush=True)
        total = step
        if train_seconds / 60 >= args.max_minutes:
            break
    result["loss_curve"] = read_losses(args.workdir / "metrics.jsonl")
    result["final"] = result["jf_curve"][-1] if result["jf_curve"] else None
    result["steps"] = total
    result["train_minutes"] = train_seconds / 60
    result["steps_per_second"] = (total or 0) / max(train_seconds, 1e-9)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if args.figure:
        plot(result, args.figure)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
