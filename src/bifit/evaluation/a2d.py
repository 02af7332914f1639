"""A2D-Sentences / JHMDB-Sentences metrics, equal to the official evaluation (``evaluate_a2d``).

Each sample is one (video, annotated frame, referred instance) with one ground-truth mask.

- mAP, AP50, AP75: every prediction of every sample goes to pycocotools' ``COCOeval`` (``segm``,
  ``useCats = 0``, other parameters default) as RLE with its score. Because all queries are
  submitted, wrong low-score queries can still match and this mAP is inflated; ``*_top1`` gives the
  same numbers from the top-scoring prediction of each sample only.
- P@K, overall and mean IoU: from the top-scoring prediction of each sample (on a score tie the last
  submitted one, as Python's stable ``sorted(...)[-1]`` picks it); per-sample
  IoU = (I + 1e-6) / (U + 1e-6) in float32; P@K counts IoU > K; overall IoU = ΣI / ΣU; mean IoU is
  the mean of per-sample IoUs.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["PRECISION_THRESHOLDS", "a2d_metrics"]

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
_EPS = np.float32(1e-6)


def _binary(array: Any, name: str, ndim: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if array.dtype != bool and np.any((array != 0) & (array != 1)):
        raise ValueError(f"{name} must be binary (0/1 or bool); threshold probabilities first")
    return array.astype(np.uint8)


def _encode(masks: np.ndarray) -> list[dict[str, Any]]:
    """[N, H, W] uint8 masks -> N COCO RLEs."""
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))


def _top1_iou(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """(IoU, I, U) with the official float32 arithmetic."""
    inter = np.float32(np.count_nonzero(gt & pred))
    union = np.float32(np.count_nonzero(gt | pred))
    iou = (inter + _EPS) / (union + _EPS)
    return float(iou), float(inter), float(union)


def _coco_ap(
    images: list[dict[str, Any]],
    gt_annotations: list[dict[str, Any]],
    predictions: list[dict[str, Any]],
) -> tuple[float, float, float]:
    """(mAP, AP50, AP75) = COCOeval segm stats[0:3] with categories ignored."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": images,
            "annotations": gt_annotations,
            "categories": [{"id": 1, "name": "object"}],
        }
        coco_gt.createIndex()
        # loadRes adds area/bbox/id fields to the dicts it gets, so give it copies.
        coco_pred = coco_gt.loadRes([dict(p) for p in predictions])
        coco_eval = COCOeval(coco_gt, coco_pred, iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return float(coco_eval.stats[0]), float(coco_eval.stats[1]), float(coco_eval.stats[2])


def a2d_metrics(
    samples: Iterable[tuple[Any, Any, Any]],
    sample_ids: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Official A2D/JHMDB-Sentences metrics of a whole test set.

    Args:
        samples: ``(gt_mask [H, W], pred_masks [Q, H, W], pred_scores [Q])`` per sample, in
            submission order; masks binary (bool or 0/1, predictions already thresholded at
            sigmoid > 0.5), scores the per-query probabilities (Q ≥ 1; sizes may differ between
            samples). Arrays or CPU tensors.
        sample_ids: optional COCO image ids (e.g. ``v_<video>_f_<frame>_i_<instance>``). COCOeval
            visits images in sorted id order, which decides how equal scores of different samples
            are ranked; ``None`` uses 1, 2, ... (submission order).

    Returns:
        ``mAP``, ``AP50``, ``AP75`` (all queries submitted, the official numbers), ``mAP_top1``,
        ``AP50_top1``, ``AP75_top1`` (top-scoring query only), ``overall_iou``, ``mean_iou`` and
        ``P@0.5`` … ``P@0.9``. ``overall_iou`` is NaN if every ground-truth and top-1 mask is empty.
    """
    images: list[dict[str, Any]] = []
    gt_annotations: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    top1_predictions: list[dict[str, Any]] = []
    ious: list[float] = []
    total_inter = 0.0
    total_union = 0.0
    ids = None if sample_ids is None else list(sample_ids)
    if ids is not None and len(set(ids)) != len(ids):
        raise ValueError("sample_ids must be unique")

    for index, sample in enumerate(samples):
        if len(sample) != 3:
            raise ValueError(f"sample {index} must be (gt_mask, pred_masks, pred_scores)")
        gt = _binary(sample[0], f"sample {index} gt_mask", 2)
        preds = _binary(sample[1], f"sample {index} pred_masks", 3)
        scores = np.asarray(sample[2]).reshape(-1)
        if preds.shape[0] == 0 or preds.shape[0] != scores.shape[0]:
            raise ValueError(
                f"sample {index} needs Q >= 1 masks and Q scores, got {preds.shape[0]} masks "
                f"and {scores.shape[0]} scores"
            )
        if preds.shape[1:] != gt.shape:
            raise ValueError(f"sample {index}: pred masks {preds.shape[1:]} vs gt mask {gt.shape}")
        if np.isnan(scores.astype(np.float64)).any():
            raise ValueError(f"sample {index} has NaN scores")
        if ids is None:
            image_id: Hashable = index + 1
        elif index < len(ids):
            image_id = ids[index]
        else:
            raise ValueError(f"more samples than sample_ids ({len(ids)})")

        height, width = gt.shape
        images.append({"id": image_id, "height": height, "width": width})
        gt_rle = _encode(gt[None])[0]
        gt_annotations.append(
            {
                # Ids start at 1: COCOeval stores matched ids and reads 0 as unmatched.
                "id": index + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": gt_rle,
                "area": float(mask_utils.area(gt_rle)),
                "bbox": mask_utils.toBbox(gt_rle).tolist(),
                "iscrowd": 0,
            }
        )
        sample_predictions = [
            {"image_id": image_id, "category_id": 1, "segmentation": rle, "score": float(score)}
            for rle, score in zip(_encode(preds), scores.tolist(), strict=True)
        ]
        predictions.extend(sample_predictions)

        # Highest score, the last one submitted among equals.
        top = len(sample_predictions) - 1 - int(np.argmax(scores[::-1]))
        top1_predictions.append(sample_predictions[top])
        iou, inter, union = _top1_iou(gt.astype(bool), preds[top].astype(bool))
        ious.append(iou)
        total_inter += inter
        total_union += union

    if not images:
        raise ValueError("a2d_metrics needs at least one sample")
    if ids is not None and len(ids) != len(images):
        raise ValueError(f"{len(ids)} sample_ids for {len(images)} samples")

    m_ap, ap50, ap75 = _coco_ap(images, gt_annotations, predictions)
    m_ap_top1, ap50_top1, ap75_top1 = _coco_ap(images, gt_annotations, top1_predictions)
    results = {
        "mAP": m_ap,
        "AP50": ap50,
        "AP75": ap75,
        "mAP_top1": m_ap_top1,
        "AP50_top1": ap50_top1,
        "AP75_top1": ap75_top1,
        "overall_iou": total_inter / total_union if total_union > 0 else math.nan,
        "mean_iou": float(np.mean(ious)),
    }
    for threshold in PRECISION_THRESHOLDS:
        results[f"P@{threshold}"] = sum(iou > threshold for iou in ious) / len(ious)
    return results
