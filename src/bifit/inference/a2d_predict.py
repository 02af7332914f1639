"""A2D-Sentences / JHMDB-Sentences prediction and evaluation (official ``evaluate_a2d`` protocol).

Prediction: every sample (one referred instance in one annotated frame) is a clip of
``num_frames`` (official 6) consecutive frames centred on the annotated frame (edge frames
repeated), resized to shorter side 360 (longer side at most 640). The clips of a batch are
zero-padded bottom/right to their largest height and width, each rounded up to a multiple of 32,
as the official evaluation loader collates them (``utils.collate_fn`` ->
``nested_tensor_from_videos_list(..., size_divisibility=32)``): even a batch of one clip is padded
(360x480 -> 384x480), and the padding changes the features, so the batches must be formed as the
official run formed them (:func:`official_batches`) to reproduce its numbers exactly. The model
keeps only the annotated frame after the backbone (``valid_indices``), as the official model does.
All Q queries are kept: mask logits upsampled ×4 bilinearly to the padded canvas, thresholded at
sigmoid > 0.5, cropped to the unpadded input size, resized to the original frame size with nearest
neighbour; score = sigmoid of the class logit.

Predictions are stored in the COCO results format the official code hands to pycocotools (a JSON
list of ``{"image_id", "category_id": 1, "segmentation": RLE, "score"}``, Q entries per sample, in
sample order), so they can be evaluated again later (:func:`evaluate_predictions`).

Evaluation: :func:`bifit.evaluation.a2d_metrics` against the original-resolution ground truth
(A2D: the instance's mask in ``a2d_annotation_with_instances/<video>/<frame>.h5``; JHMDB: the
frame's ``part_mask`` in ``puppet_mask.mat``): mAP over all Q predictions per sample (official,
inflated), the same from the top-1 prediction, overall / mean IoU and P@0.5..0.9 from the top-1.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from bifit.data.a2d import (
    A2DSentencesDataset,
    a2d_image_id,
    load_a2d_samples,
    read_a2d_masks,
)
from bifit.data.collate import collate_fn
from bifit.data.jhmdb import (
    JHMDBSentencesDataset,
    jhmdb_image_id,
    load_jhmdb_samples,
    read_part_masks,
)
from bifit.data.frame_sizes import EVAL_SHORT_SIZE
from bifit.data.transforms import make_eval_transforms
from bifit.evaluation import a2d_metrics
from bifit.inference.core import masks_from_logits
from bifit.modeling.bifit import BifitModel

__all__ = [
    "A2D_EVAL_MAX_SIZE",
    "A2D_NUM_FRAMES",
    "A2D_SIZE_DIVISIBILITY",
    "GroundTruth",
    "build_eval_dataset",
    "evaluate_predictions",
    "format_a2d_metrics",
    "ground_truth",
    "load_predictions",
    "official_batches",
    "postprocess_masks",
    "predict_batches",
    "predict_samples",
]

Benchmark = Literal["a2d", "jhmdb"]
BENCHMARKS: tuple[Benchmark, ...] = ("a2d", "jhmdb")
#: Official evaluation clip length (``--num_frames`` default) and longer-side cap.
A2D_NUM_FRAMES = 6
A2D_EVAL_MAX_SIZE = 640
#: The official evaluation loader pads every batch to a multiple of this (``utils.collate_fn``).
A2D_SIZE_DIVISIBILITY = 32
#: Output stride of the mask logits.
MASK_STRIDE = 4


def _check_benchmark(benchmark: str) -> None:
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")


def build_eval_dataset(
    benchmark: Benchmark,
    root: str | os.PathLike[str],
    *,
    num_frames: int = A2D_NUM_FRAMES,
    short_side: int = EVAL_SHORT_SIZE,
    max_size: int | None = A2D_EVAL_MAX_SIZE,
) -> A2DSentencesDataset | JHMDBSentencesDataset:
    """The official evaluation dataset: A2D-Sentences test samples or all JHMDB-Sentences samples."""
    _check_benchmark(benchmark)
    transforms = make_eval_transforms(short_side, max_size)
    if benchmark == "a2d":
        return A2DSentencesDataset(root, "test", num_frames=num_frames, transforms=transforms, max_videos_in_memory=2)
    return JHMDBSentencesDataset(root, num_frames=num_frames, transforms=transforms)


def postprocess_masks(
    mask_logits: Tensor, input_sizes: Tensor, orig_sizes: Tensor
) -> list[np.ndarray]:
    """Official A2D post-processing of the annotated frame's mask logits.

    Args:
        mask_logits: [B, Q, h4, w4] logits at stride 4 of the padded batch canvas.
        input_sizes: [B, 2] unpadded (h, w) of each model input.
        orig_sizes: [B, 2] original (H, W) of each frame.

    Returns:
        B bool arrays [Q, H, W]: upsampled ×4 (bilinear), sigmoid > 0.5, cropped to the input
        size, resized to the original size with (legacy) nearest neighbour.
    """
    h4, w4 = mask_logits.shape[-2:]
    binary = masks_from_logits(mask_logits, (h4 * MASK_STRIDE, w4 * MASK_STRIDE))
    out = []
    for masks, (h, w), (orig_h, orig_w) in zip(binary, input_sizes.tolist(), orig_sizes.tolist(), strict=True):
        cropped = masks[:, :h, :w].unsqueeze(1).float()
        resized = F.interpolate(cropped, size=(int(orig_h), int(orig_w)), mode="nearest")
        out.append(resized[:, 0].bool().cpu().numpy())
    return out


def _encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def official_batches(num_samples: int, batch_size: int = 1, num_gpus: int = 1) -> list[list[int]]:
    """The batches of sample indices the official A2D/JHMDB evaluation forms, in gathered order.

    ``main.py --eval`` loads the dataset (in file order) with ``DataLoader(batch_size=B,
    drop_last=False)``. On one GPU the sampler is sequential: batches are consecutive runs of B
    samples. On N GPUs it is the Deformable-DETR ``DistributedSampler(shuffle=False)``: the index
    list is padded to a multiple of N by repeating its first indices, GPU r takes the contiguous
    block ``[r * n, (r + 1) * n)`` with ``n = ceil(num_samples / N)`` and batches it alone, and
    ``all_gather`` concatenates the predictions of GPU 0, 1, ... So which samples share a batch
    (and are padded together) depends on N, and the last GPU predicts the first
    ``N * n - num_samples`` samples a second time; the evaluation counts both copies.

    Args:
        num_samples: size of the evaluation dataset.
        batch_size: clips per batch on each GPU (the released numbers: 2).
        num_gpus: GPUs of the official run (the released numbers: 4).

    Returns:
        The batches in the order their predictions are gathered; every sample appears at least once.
    """
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size), ("num_gpus", num_gpus)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    per_gpu = math.ceil(num_samples / num_gpus)
    indices = list(range(num_samples))
    indices += indices[: per_gpu * num_gpus - num_samples]
    batches = []
    for start in range(0, len(indices), per_gpu):
        block = indices[start : start + per_gpu]
        batches += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    return batches


@torch.inference_mode()
def predict_batches(
    model: BifitModel,
    dataset: Dataset,
    batches: Sequence[Sequence[int]],
    *,
    size_divisibility: int = A2D_SIZE_DIVISIBILITY,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "a2d",
) -> Iterator[list[dict[str, Any]]]:
    """COCO-format predictions (all Q queries) of each batch of samples, one list per batch.

    Args:
        model: the model in eval mode.
        dataset: an evaluation dataset of :func:`build_eval_dataset` (items carry ``image_id``,
            ``valid_indices``, ``size`` and ``orig_size``).
        batches: lists of sample indices, each predicted in one forward pass, its clips zero-padded
            to a common canvas (e.g. :func:`official_batches`, or a rank's share of them).
        size_divisibility: round the canvas up to a multiple of this (official: 32).
        num_workers: DataLoader worker processes (video decoding).
        progress: show a progress bar.
        desc: progress bar label.

    Yields:
        Per batch, ``{"image_id", "category_id": 1, "segmentation": {"size", "counts"}, "score"}``
        dicts, Q per sample in query order, samples in batch order.
    """
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
    batches = [list(b) for b in batches]
    if any(not b for b in batches):
        raise ValueError("every batch needs at least one sample")
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers)
    for videos, captions, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress):
        valid = [int(t["valid_indices"][0]) for t in targets]
        out = model(
            [v.to(model.device) for v in videos], captions, size_divisibility=size_divisibility, valid_indices=valid
        )
        scores = out["pred_logits"][:, 0, :, 0].sigmoid().cpu()  # [B, Q]
        masks = postprocess_masks(
            out["pred_masks"][:, 0],
            torch.stack([t["size"] for t in targets]),
            torch.stack([t["orig_size"] for t in targets]),
        )
        yield [
            {"image_id": target["image_id"], "category_id": 1, "segmentation": _encode_rle(mask), "score": score}
            for target, sample_scores, sample_masks in zip(targets, scores, masks, strict=True)
            for score, mask in zip(sample_scores.tolist(), sample_masks, strict=True)
        ]


def predict_samples(
    model: BifitModel,
    dataset: Dataset,
    *,
    batch_size: int = 1,
    num_gpus: int = 1,
    size_divisibility: int = A2D_SIZE_DIVISIBILITY,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "a2d",
) -> list[dict[str, Any]]:
    """Predictions of the whole dataset in the official evaluation's batches and order.

    The batches are :func:`official_batches` ``(len(dataset), batch_size, num_gpus)``; see
    :func:`predict_batches` for the other arguments and the prediction format. Returns the
    predictions of all batches in order (as the official ``all_gather`` does).
    """
    batches = official_batches(len(dataset), batch_size, num_gpus)
    return [
        p
        for batch in predict_batches(
            model, dataset, batches, size_divisibility=size_divisibility, num_workers=num_workers,
            progress=progress, desc=desc,
        )
        for p in batch
    ]


@dataclass(frozen=True)
class GroundTruth:
    """The evaluation samples of a benchmark in dataset order, with a reader of their masks.

    ``ids[i]`` is the official id of sample i; ``read(i)`` returns its bool [H, W] mask at the
    original resolution.
    """

    ids: list[str]
    read: Callable[[int], np.ndarray]


def ground_truth(benchmark: Benchmark, root: str | os.PathLike[str]) -> GroundTruth:
    """Sample ids and original-resolution ground-truth masks of A2D-Sentences test / JHMDB-Sentences."""
    _check_benchmark(benchmark)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{benchmark} root not found: {root}")
    if benchmark == "a2d":
        a2d = load_a2d_samples(root, "test")
        masks_dir = root / "text_annotations" / "a2d_annotation_with_instances"

        def read_a2d(i: int) -> np.ndarray:
            s = a2d[i]
            instances, masks = read_a2d_masks(masks_dir / s.video_id / f"{s.frame_idx:05d}.h5")
            if s.instance_id not in instances:
                raise ValueError(f"instance {s.instance_id} not annotated in frame {s.frame_idx} of {s.video_id}")
            return masks[instances.index(s.instance_id)]

        return GroundTruth([a2d_image_id(s.video_id, s.frame_idx, s.instance_id) for s in a2d], read_a2d)

    jhmdb = load_jhmdb_samples(root)
    cache: dict[Path, np.ndarray] = {}

    def read_jhmdb(i: int) -> np.ndarray:
        s = jhmdb[i]
        if s.masks_path not in cache:
            # Samples of a video are consecutive: keep only the current video's masks.
            cache.clear()
            cache[s.masks_path] = read_part_masks(s.masks_path)
        masks = cache[s.masks_path]
        if not 1 <= s.frame_idx <= len(masks):
            raise ValueError(f"{s.masks_path} has {len(masks)} masks; frame {s.frame_idx} has none")
        return masks[s.frame_idx - 1]

    return GroundTruth([jhmdb_image_id(s.video_id, s.frame_idx) for s in jhmdb], read_jhmdb)


def load_predictions(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A COCO-results JSON file of :func:`predict_samples` (or the official code's predictions)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, list) or not all(
        isinstance(p, dict) and {"image_id", "segmentation", "score"} <= set(p) for p in data
    ):
        raise ValueError(f"{path} must be a JSON list of {{'image_id', 'segmentation', 'score'}} objects")
    return data


def evaluate_predictions(
    gt: GroundTruth, predictions: Sequence[dict[str, Any]], *, progress: bool = True
) -> dict[str, float]:
    """Official A2D/JHMDB metrics (see :func:`bifit.evaluation.a2d_metrics`) of COCO-format predictions.

    Every sample of ``gt`` needs at least one prediction and every prediction must belong to a
    sample; the predictions of a sample keep their order (it breaks score ties).
    """
    by_id: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        by_id.setdefault(str(p["image_id"]), []).append(p)
    unknown = sorted(set(by_id) - set(gt.ids))
    if unknown:
        raise ValueError(f"{len(unknown)} prediction id(s) are not evaluation samples, e.g. {unknown[0]!r}")
    missing = [i for i in gt.ids if i not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} evaluation sample(s) have no prediction, e.g. {missing[0]!r}")

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for index, image_id in enumerate(tqdm(gt.ids, desc="metrics", unit="sample", disable=not progress)):
            gt_mask = gt.read(index)
            preds = by_id[image_id]
            masks = np.stack([mask_utils.decode(_rle(p["segmentation"])) for p in preds])
            if masks.shape[1:] != gt_mask.shape:
                raise ValueError(f"sample {image_id}: predicted masks are {masks.shape[1:]}, ground truth {gt_mask.shape}")
            yield gt_mask, masks, np.array([float(p["score"]) for p in preds])

    return a2d_metrics(samples(), sample_ids=gt.ids)


def _rle(segmentation: dict[str, Any]) -> dict[str, Any]:
    counts = segmentation["counts"]
    return {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def format_a2d_metrics(metrics: dict[str, float], name: str) -> str:
    """Printable lines of the metrics, the official ones first, the top-1 mAP labelled as such."""
    lines = [
        (
            f"{name}: overall IoU {metrics['overall_iou']:.4f}  mean IoU {metrics['mean_iou']:.4f}  "
            f"mAP {metrics['mAP']:.4f}  (official: mAP over all queries of each sample)"
        ),
        "  precision: " + "  ".join(f"P@{k} {metrics[f'P@{k}']:.4f}" for k in (0.5, 0.6, 0.7, 0.8, 0.9)),
        f"  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}",
        (
            f"  top-1 query only: mAP {metrics['mAP_top1']:.4f}  AP50 {metrics['AP50_top1']:.4f}  "
            f"AP75 {metrics['AP75_top1']:.4f}"
        ),
    ]
    return "\n".join(lines)
