"""Per-frame region (J) and contour (F) measures of the DAVIS-2017 toolkit, and its statistics.

Every formula, edge case and floating-point operation follows the official ``davis2017-evaluation``
toolkit so that numbers agree to the last bit: J is the void-masked Jaccard index; F matches
one-pixel boundary maps within a disk-shaped tolerance (dilation with ``cv2.dilate``).
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np

__all__ = [
    "boundary_map",
    "boundary_radius",
    "contour_accuracy",
    "disk_kernel",
    "mean_j_and_f",
    "pairwise_frame_scores",
    "region_similarity",
    "sequence_statistics",
]


def _as_bool_2d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [H, W] mask, got shape {array.shape}")
    return array.astype(bool)


def _prepare(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gt_b = _as_bool_2d(gt, "gt")
    pred_b = _as_bool_2d(pred, "pred")
    if gt_b.shape != pred_b.shape:
        raise ValueError(f"gt {gt_b.shape} and pred {pred_b.shape} shapes differ")
    if void is None:
        valid = np.ones_like(gt_b)
    else:
        void_b = _as_bool_2d(void, "void")
        if void_b.shape != gt_b.shape:
            raise ValueError(f"void {void_b.shape} and gt {gt_b.shape} shapes differ")
        valid = ~void_b
    return gt_b, pred_b, valid


def region_similarity(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """Jaccard index J of one frame, ignoring void pixels.

    Args:
        gt: [H, W] ground-truth mask (any nonzero value is foreground).
        pred: [H, W] predicted mask (any nonzero value is foreground).
        void: optional [H, W] mask of pixels excluded from both intersection and union.

    Returns:
        |pred ∧ gt ∧ ¬void| / |(pred ∨ gt) ∧ ¬void|, and 1.0 when that union is empty.
    """
    return _jaccard(*_prepare(gt, pred, void))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a binary mask, as the toolkit's ``seg2bmap`` draws it.

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour. On
    the last row only the east neighbour counts, on the last column only the south one, and the
    bottom-right pixel is never a boundary: pixels beyond the image border are not compared, so a
    mask touching the border has no boundary along it.

    Args:
        mask: [H, W] mask (nonzero = foreground).

    Returns:
        [H, W] bool boundary map.
    """
    seg = _as_bool_2d(mask, "mask")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    # The order of these three assignments matters for 1-row or 1-column images.
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk_kernel(radius: float) -> np.ndarray:
    """Disk structuring element equal to ``skimage.morphology.disk(radius)`` (default arguments).

    Args:
        radius: disk radius in pixels; non-integer radii give the same (possibly even-sized)
            grid as scikit-image, ``arange(-radius, radius + 1)`` along each axis.

    Returns:
        [K, K] uint8 kernel, 1 where x² + y² ≤ radius².
    """
    if radius < 0:
        raise ValueError(f"disk radius must be >= 0, got {radius}")
    coords = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(coords, coords)
    return ((xx**2 + yy**2) <= radius**2).astype(np.uint8)


def boundary_radius(shape: tuple[int, ...], bound_th: float = 0.008) -> float:
    """Boundary tolerance in pixels: bound_th itself from 1 on, else ceil(bound_th · diagonal)."""
    if bound_th >= 1:
        return bound_th
    return float(np.ceil(bound_th * np.linalg.norm(shape)))


def _boundary_and_dilation(mask: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    boundary = boundary_map(mask)
    dilated = cv2.dilate(boundary.astype(np.uint8), kernel).astype(bool)
    return boundary, dilated


def _f_measure(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray]) -> float:
    """F from (boundary, dilated boundary) pairs of the prediction and the ground truth."""
    pred_boundary, pred_dilated = pred
    gt_boundary, gt_dilated = gt
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(pred_boundary & gt_dilated) / float(n_pred)
        recall = np.count_nonzero(gt_boundary & pred_dilated) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def _jaccard(gt: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> float:
    inter = int(np.count_nonzero(gt & pred & valid))
    union = int(np.count_nonzero((gt | pred) & valid))
    if union == 0:
        return 1.0
    return float(np.float64(inter) / np.float64(union))


def contour_accuracy(
    gt: np.ndarray,
    pred: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = 0.008,
) -> float:
    """Boundary F-measure of one frame, as the DAVIS-2017 toolkit's ``f_measure``.

    Args:
        gt: [H, W] ground-truth mask (nonzero = foreground).
        pred: [H, W] predicted mask (nonzero = foreground).
        void: optional [H, W] mask; void pixels are removed from both masks before boundaries are
            drawn.
        bound_th: tolerance; below 1 it is a fraction of the image diagonal (rounded up to whole
            pixels), from 1 on it is the radius in pixels.

    Returns:
        F = 2PR / (P + R), where P (R) is the fraction of predicted (ground-truth) boundary pixels
        within the tolerance of the other boundary. No predicted boundary gives P = 1, R = 0; no
        ground-truth boundary gives P = 0, R = 1; neither gives F = 1; P + R = 0 gives F = 0.
    """
    gt_b, pred_b, valid = _prepare(gt, pred, void)
    kernel = disk_kernel(boundary_radius(pred_b.shape, bound_th))
    return _f_measure(
        _boundary_and_dilation(pred_b & valid, kernel), _boundary_and_dilation(gt_b & valid, kernel)
    )


def mean_j_and_f(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Mean J and mean F over the frames of one clip.

    Args:
        gt, pred: bool masks [T, H, W] of the ground truth and the prediction.

    Returns:
        ``(J, F)``: the means over frames of :func:`region_similarity` and :func:`contour_accuracy`.
    """
    j = [region_similarity(g, p) for g, p in zip(gt, pred)]
    f = [contour_accuracy(g, p) for g, p in zip(gt, pred)]
    return float(np.mean(j)), float(np.mean(f))


def pairwise_frame_scores(
    gt: np.ndarray,
    pred: np.ndarray,
    void: np.ndarray | None = None,
    bound_th: float = 0.008,
    diagonal_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of every (prediction, ground truth) pair of one frame, each boundary drawn once.

    Args:
        gt: [G, H, W] ground-truth object masks.
        pred: [P, H, W] predicted object masks.
        void: optional [H, W] void mask shared by all pairs.
        bound_th: as in ``contour_accuracy``.
        diagonal_only: score only pairs (k, k) for k < min(P, G); other entries stay 0.

    Returns:
        (J, F), two [P, G] float64 arrays equal to ``region_similarity`` / ``contour_accuracy``
        of ``(gt[g], pred[p], void)``.
    """
    gt = np.asarray(gt).astype(bool)
    pred = np.asarray(pred).astype(bool)
    if gt.ndim != 3 or pred.ndim != 3 or gt.shape[1:] != pred.shape[1:]:
        raise ValueError(
            f"gt [G, H, W] and pred [P, H, W] must share H, W; got {gt.shape}, {pred.shape}"
        )
    valid = np.ones(gt.shape[1:], dtype=bool) if void is None else ~_as_bool_2d(void, "void")
    kernel = disk_kernel(boundary_radius(gt.shape[1:], bound_th))
    gt_bounds = [_boundary_and_dilation(m & valid, kernel) for m in gt]
    pred_bounds = [_boundary_and_dilation(m & valid, kernel) for m in pred]
    j_values = np.zeros((pred.shape[0], gt.shape[0]))
    f_values = np.zeros((pred.shape[0], gt.shape[0]))
    for p in range(pred.shape[0]):
        for g in range(gt.shape[0]):
            if diagonal_only and p != g:
                continue
            j_values[p, g] = _jaccard(gt[g], pred[p], valid)
            f_values[p, g] = _f_measure(pred_bounds[p], gt_bounds[g])
    return j_values, f_values


def sequence_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame J or F values (toolkit ``db_statistics``).

    Args:
        per_frame: [T] per-frame values.

    Returns:
        (mean, recall, decay): NaN-ignoring mean; fraction of frames with value > 0.5; mean of the
        first quarter minus mean of the last quarter, with the toolkit's overlapping bins
        (bin edges ``uint8(round(linspace(1, T, 5) + 1e-10) - 1)``, bin i = edges[i] .. edges[i+1]
        inclusive).
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"per_frame must be a non-empty 1-D array, got shape {values.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        # The uint8 cast is the toolkit's; it only matters beyond 256 frames.
        edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.uint8)
        bins = [values[edges[i] : edges[i + 1] + 1] for i in range(4)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)
