"""Run the official BIFIT/ReferFormer criterion on a few fixed cases and store what it returns.

The result, `tests/fixtures/criterion/reference.pt`, holds for every case the inputs (model
outputs and targets), every loss term, the weighted total, the query matched at every decoder
layer and the gradients of the total with respect to every prediction tensor. The tests of
`bifit.training` compare our criterion against it.

Usage (CPU, a few seconds):

    PYTHONPATH=/path/to/BIFIT python scripts/make_criterion_fixture.py \
        --official-root /path/to/BIFIT [--out tests/fixtures/criterion/reference.pt]

The official `models/__init__.py` imports the whole model (and its compiled deformable attention),
so the script registers an empty `models` package pointing at the official folder and imports only
`models.criterion` and `models.matcher`. `fvcore` (used by `models/segmentation.py` for weight
initialisation only) is replaced by a stub when it is not installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path
from typing import Any

import torch

NUM_QUERIES = 5
AUX_LAYERS = 3  # dec_layers 4 -> three auxiliary outputs
MASK_STRIDE = 4
SIZE_DIVISIBILITY = 32


def load_official(root: Path) -> tuple[Any, Any]:
    """Import the official `SetCriterion` and `HungarianMatcher` classes from `root`."""
    if not (root / "models" / "criterion.py").is_file():
        raise FileNotFoundError(f"no models/criterion.py under the official root {root}")
    sys.path.insert(0, str(root))
    try:
        importlib.import_module("fvcore.nn.weight_init")
    except ImportError:
        fvcore = types.ModuleType("fvcore")
        fvcore_nn = types.ModuleType("fvcore.nn")
        weight_init = types.ModuleType("fvcore.nn.weight_init")
        fvcore.nn = fvcore_nn
        fvcore_nn.weight_init = weight_init
        sys.modules.update({"fvcore": fvcore, "fvcore.nn": fvcore_nn, "fvcore.nn.weight_init": weight_init})
    package = types.ModuleType("models")
    package.__path__ = [str(root / "models")]
    sys.modules["models"] = package
    criterion_module = importlib.import_module("models.criterion")
    matcher_module = importlib.import_module("models.matcher")
    return criterion_module.SetCriterion, matcher_module.HungarianMatcher


def build_official(set_criterion: Any, matcher_cls: Any, num_classes: int) -> Any:
    """The criterion as `models/referformer.py::build` makes it with the released options."""
    matcher = matcher_cls(cost_class=2, cost_bbox=5, cost_giou=2, cost_mask=2, cost_dice=5, num_classes=num_classes)
    weight_dict = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 2.0, "loss_dice": 5.0}
    weight_dict.update({f"{k}_{i}": v for i in range(AUX_LAYERS) for k, v in list(weight_dict.items())})
    return set_criterion(
        num_classes, matcher=matcher, weight_dict=weight_dict, eos_coef=0.1,
        losses=["labels", "boxes", "masks"], focal_alpha=0.25,
    )


def box_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Normalised cxcywh box and validity of one [H, W] mask, as the official loaders compute them.

    The box spans the inclusive pixel bounds; a frame is valid only if the box has positive
    width and height, and invalid frames get the zero box.
    """
    h, w = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return torch.zeros(4), 0
    x1, x2, y1, y2 = xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()
    if not (x2 > x1 and y2 > y1):
        return torch.zeros(4), 0
    x1, x2, y1, y2 = float(x1), float(x2), float(y1), float(y2)
    return torch.tensor([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]), 1


def make_target(masks: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """A target dict in the official datasets' format from [T, H, W] bool masks."""
    boxes, valid = zip(*(box_from_mask(m) for m in masks))
    t, h, w = masks.shape
    return {
        "labels": labels if labels is not None else torch.zeros(t, dtype=torch.int64),
        "boxes": torch.stack(boxes),
        "masks": masks,
        "valid": torch.tensor(valid, dtype=torch.int64),
        "size": torch.tensor([h, w]),
        "orig_size": torch.tensor([h, w]),
        "frames_idx": torch.arange(t),
        "caption": "a person riding a horse",
    }


def rect_mask(h: int, w: int, y1: int, y2: int, x1: int, x2: int) -> torch.Tensor:
    """[H, W] bool mask, True on rows y1..y2-1 and columns x1..x2-1."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


def padded_mask_size(targets: list[dict[str, Any]]) -> tuple[int, int]:
    h = max(t["masks"].shape[-2] for t in targets)
    w = max(t["masks"].shape[-1] for t in targets)
    pad = lambda n: (n + SIZE_DIVISIBILITY - 1) // SIZE_DIVISIBILITY * SIZE_DIVISIBILITY  # noqa: E731
    return pad(h) // MASK_STRIDE, pad(w) // MASK_STRIDE


def random_layer(gen: torch.Generator, b: int, t: int, q: int, k: int, hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """One decoder layer's outputs with plausible ranges (boxes are sigmoids, so w, h > 0)."""
    return {
        "pred_logits": torch.randn(b, t, q, k, generator=gen) * 2.0,
        "pred_boxes": torch.sigmoid(torch.randn(b, t, q, 4, generator=gen)),
        "pred_masks": torch.randn(b, t, q, *hw, generator=gen) * 3.0,
    }


def case_ytvos(gen: torch.Generator) -> tuple[list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """B=2, T=3: different sizes, an absent object, a 1-pixel-wide object (invalid, mask kept)."""
    masks0 = torch.stack([
        rect_mask(32, 48, 4, 20, 6, 30),
        torch.zeros(32, 48, dtype=torch.bool),  # object absent
        rect_mask(32, 48, 10, 31, 20, 47),
    ])
    masks1 = torch.stack([
        rect_mask(40, 36, 0, 12, 0, 9),
        rect_mask(40, 36, 5, 30, 17, 18),  # 1 pixel wide: invalid, but its mask stays
        rect_mask(40, 36, 22, 39, 3, 35),
    ])
    targets = [make_target(masks0), make_target(masks1)]
    hw = padded_mask_size(targets)
    layers = [random_layer(gen, 2, 3, NUM_QUERIES, 1, hw) for _ in range(AUX_LAYERS + 1)]
    return targets, layers


def case_ties(gen: torch.Generator) -> tuple[list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """Exactly equal matching costs: every query equal (sample 0), queries 1 and 3 equal and best (sample 1)."""
    masks = torch.stack([rect_mask(32, 32, 4, 20, 6, 24), rect_mask(32, 32, 8, 28, 2, 14)])
    targets = [make_target(masks), make_target(masks.flip(-1))]
    hw = padded_mask_size(targets)
    layers = []
    for _ in range(AUX_LAYERS + 1):
        layer = random_layer(gen, 2, 2, NUM_QUERIES, 1, hw)
        for name, value in layer.items():
            value[0] = value[0, :, :1].clone().expand_as(value[0])
            value[1, :, 3] = value[1, :, 1]
        # queries 1 and 3 of sample 1 resemble the target, so they beat the random ones
        layer["pred_logits"][1, :, [1, 3]] = 4.0
        layer["pred_boxes"][1, :, [1, 3]] = targets[1]["boxes"][:, None]
        small = targets[1]["masks"][:, 2::4, 2::4].float() * 12.0 - 6.0
        layer["pred_masks"][1, :, [1, 3]] = small[:, None]
        layers.append(layer)
    return targets, layers


def case_a2d(gen: torch.Generator) -> tuple[list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """A2D/JHMDB style: one annotated frame per sample (T=1), B=3, three sizes."""
    targets = [
        make_target(rect_mask(36, 44, 3, 30, 10, 40)[None]),
        make_target(rect_mask(24, 48, 0, 24, 0, 5)[None]),
        make_target(rect_mask(48, 28, 20, 47, 1, 27)[None]),
    ]
    hw = padded_mask_size(targets)
    layers = [random_layer(gen, 3, 1, NUM_QUERIES, 1, hw) for _ in range(AUX_LAYERS + 1)]
    return targets, layers


def case_multiclass(gen: torch.Generator) -> tuple[list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """Non-binary heads (K=3), as in the official pre-training: class costs follow the labels."""
    masks0 = torch.stack([rect_mask(32, 40, 2, 18, 4, 30), rect_mask(32, 40, 6, 26, 10, 38)])
    masks1 = torch.stack([torch.zeros(28, 32, dtype=torch.bool), rect_mask(28, 32, 3, 25, 2, 20)])
    targets = [
        make_target(masks0, torch.tensor([2, 2])),
        make_target(masks1, torch.tensor([1, 1])),
    ]
    hw = padded_mask_size(targets)
    layers = [random_layer(gen, 2, 2, NUM_QUERIES, 3, hw) for _ in range(AUX_LAYERS + 1)]
    return targets, layers


CASES = {
    "ytvos": (case_ytvos, 1),
    "ties": (case_ties, 1),
    "a2d": (case_a2d, 1),
    "multiclass": (case_multiclass, 3),
}


def run_case(criterion: Any, targets: list[dict[str, Any]], layers: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    leaves = [{k: v.clone().requires_grad_(True) for k, v in layer.items()} for layer in layers]
    outputs = dict(leaves[-1])
    outputs["aux_outputs"] = [dict(layer) for layer in leaves[:-1]]
    loss_dict = criterion(outputs, targets)
    total = sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict if k in criterion.weight_dict)
    total.backward()
    with torch.no_grad():
        matched = [torch.cat([src for src, _ in criterion.matcher(layer, targets)]) for layer in leaves]
    return {
        "targets": targets,
        "outputs": [{k: v.detach() for k, v in layer.items()} for layer in leaves],
        "losses": {**{k: v.detach() for k, v in loss_dict.items()}, "loss": total.detach()},
        "matched": matched,
        "grads": [{k: v.grad for k, v in layer.items()} for layer in leaves],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-root", type=Path, required=True, help="checkout of LANMNG/BIFIT")
    default_out = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "criterion" / "reference.pt"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()

    set_criterion, matcher_cls = load_official(args.official_root.resolve())
    torch.use_deterministic_algorithms(True)
    fixture: dict[str, Any] = {"note": "layers are ordered aux 0, aux 1, aux 2, final"}
    for index, (name, (make, num_classes)) in enumerate(CASES.items()):
        gen = torch.Generator().manual_seed(1000 + index)
        targets, layers = make(gen)
        fixture[name] = run_case(build_official(set_criterion, matcher_cls, num_classes), targets, layers)
        losses = fixture[name]["losses"]
        print(f"{name}: loss {losses['loss'].item():.6f}, matched {[m.tolist() for m in fixture[name]['matched']]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
