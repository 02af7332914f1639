"""How well a model's visual features tell the synthetic objects' colour, shape and size apart.

For every fully visible object of the first frame of `--clips` synthetic clips, the feature vector at
its centre is read from the backbone's stride-4 stage and from the input projections at strides 8, 16
and 32 (before any text enters). A linear classifier per attribute is fitted on 70% of the objects and
scored on the rest. High accuracy means the attribute is linearly readable from the features; accuracy
near `majority` (always answering the commonest value) means the backbone has not learnt it.

    PYTHONPATH=src python benchmarks/probe_backbone_attributes.py src/bifit/assets/demo_model --output probe.json

Writes JSON: per feature level and attribute, the held-out accuracy and the majority baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bifit import load_pretrained
from bifit.data.synthetic import SyntheticRVOS
from bifit.modeling.bifit import BifitModel
from bifit.modeling.checkpoint import CheckpointError, read_pretrained_config
from bifit.data.normalization import normalize_frames

ATTRIBUTES = ("colour", "shape", "size")
LEVELS = {"stride4": 4, "stride8": 8, "stride16": 16, "stride32": 32}


@torch.no_grad()
def object_features(model: BifitModel, num_clips: int, size: tuple[int, int], seed: int):
    """Features [N, C] per level at the centres of the fully visible objects of frame 0 of clips as long
    as the model's training clips, and their attribute values (N each)."""
    dataset = SyntheticRVOS(num_clips, num_frames=model.config.num_frames, size=size, seed=seed)
    features: dict[str, list[np.ndarray]] = {level: [] for level in LEVELS}
    labels: dict[str, list[str]] = {name: [] for name in ATTRIBUTES}
    for index in range(num_clips):
        clip, _, _ = dataset.sample(index)
        visual = model.encode_video([normalize_frames(clip.frames)])
        maps = dict(zip(LEVELS, [visual.layer1, *visual.srcs[:3]]))
        for obj in clip.objects:
            if obj.visible_fraction[0] < 0.9:
                continue
            ys, xs = np.nonzero(obj.masks[0])
            for level, stride in LEVELS.items():
                fmap = maps[level][0]
                y = min(int(ys.mean() // stride), fmap.shape[-2] - 1)
                x = min(int(xs.mean() // stride), fmap.shape[-1] - 1)
                features[level].append(fmap[:, y, x].numpy())
            for name in ATTRIBUTES:
                labels[name].append(getattr(obj.attributes, name))
    return {level: np.stack(rows) for level, rows in features.items()}, labels


def linear_probe(features: np.ndarray, labels: list[str], train_share: float = 0.7, steps: int = 500) -> dict:
    """Held-out accuracy of a softmax regression fitted on the first `train_share` of the rows, and the
    accuracy of always answering the commonest training value."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    x = torch.as_tensor(features, dtype=torch.float32)
    split = int(len(y) * train_share)
    if split == 0 or split == len(y):
        raise ValueError(f"need objects on both sides of the split, got {len(y)}")
    x = (x - x[:split].mean(0)) / (x[:split].std(0) + 1e-5)
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], len(classes))
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.01, generator=generator)
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(layer(x[:split]), y[:split]).backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (layer(x[split:]).argmax(1) == y[split:]).float().mean().item()
    commonest = int(torch.bincount(y[:split], minlength=len(classes)).argmax())
    majority = (y[split:] == commonest).float().mean().item()
    return {"accuracy": accuracy, "majority": majority, "objects": len(y)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--seed", type=int, default=5, help="data seed of the probed clips")
    parser.add_argument("--output", type=Path, default=Path("probe_backbone_attributes.json"))
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="frame size (default: the model's demo frame size, else 96 128)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model = load_pretrained(args.model_dir)
        demo = read_pretrained_config(args.model_dir).get("demo", {})
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = tuple(args.size or demo.get("frame_size", (96, 128)))
    features, labels = object_features(model, args.clips, size, args.seed)
    result = {
        "model_dir": str(args.model_dir),
        "clips": args.clips,
        "levels": {level: {name: linear_probe(x, labels[name]) for name in ATTRIBUTES} for level, x in features.items()},
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for level, scores in result["levels"].items():
        print(level, " ".join(f"{n} {s['accuracy']:.2f} (majority {s['majority']:.2f})" for n, s in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
