"""Deterministic synthetic inputs for the evaluation tests and scripts/make_evaluation_fixtures.py.

Everything is drawn with integer arithmetic (no random generator), so the tests rebuild exactly the
inputs on which the official tools produced the committed reference numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DAVIS_UNSUPERVISED_SET = "val"
DAVIS_SEMI_SUPERVISED_SET = "train"


def hash_noise(shape: tuple[int, int], seed: int, percent: int) -> np.ndarray:
    """[H, W] bool mask, True at about `percent` % of pixels; an integer hash of (y, x, seed)."""
    yy, xx = np.meshgrid(
        np.arange(shape[0], dtype=np.int64), np.arange(shape[1], dtype=np.int64), indexing="ij"
    )
    h = (yy * 73856093) ^ (xx * 19349663) ^ (seed * 83492791)
    h = (h * 2654435761) % 4294967296
    return (h >> 8) % 100 < percent


def hash_int(*values: int, modulo: int) -> int:
    """Deterministic integer in [0, modulo) from a few integers."""
    h = 2166136261
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFF)) * 16777619) % 4294967296
    h = (h ^ (h >> 13)) * 2246822519 % 4294967296
    return int((h ^ (h >> 16)) % modulo)


def rect(shape: tuple[int, int], y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """[H, W] bool mask of rows y0..y1-1 and columns x0..x1-1 (clipped to the image)."""
    mask = np.zeros(shape, dtype=bool)
    mask[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return mask


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    """[H, W] bool mask of pixels within distance r of (cy, cx)."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def pixel(shape: tuple[int, int], y: int, x: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y, x] = True
    return mask


DISK_RADII = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 0.5, 1.5, 2.5)


def frame_cases() -> list[dict]:
    """Single-frame (gt, pred, void, bound_th) cases covering the toolkit's edge cases."""
    s = (12, 16)
    empty = np.zeros(s, dtype=bool)
    full = np.ones(s, dtype=bool)
    cases = [
        ("both_empty", empty, empty, None, 0.008),
        ("gt_empty", empty, rect(s, 3, 4, 8, 10), None, 0.008),
        ("pred_empty", rect(s, 3, 4, 8, 10), empty, None, 0.008),
        ("same_pixel", pixel(s, 5, 6), pixel(s, 5, 6), None, 0.008),
        ("pixel_next_to_pixel", pixel(s, 5, 6), pixel(s, 5, 7), None, 0.008),
        ("pixel_far_from_pixel", pixel(s, 2, 2), pixel(s, 9, 13), None, 0.008),
        ("pixel_bottom_right", pixel(s, 11, 15), pixel(s, 11, 15), None, 0.008),
        ("pixel_top_left", pixel(s, 0, 0), pixel(s, 0, 1), None, 0.008),
        ("full_vs_full", full, full, None, 0.008),
        ("full_vs_rect", full, rect(s, 2, 2, 10, 14), None, 0.008),
        ("border_rect_vs_rect", rect(s, 0, 0, 6, 16), rect(s, 0, 0, 7, 15), None, 0.008),
        ("last_row_vs_last_col", rect(s, 11, 0, 12, 16), rect(s, 0, 15, 12, 16), None, 0.008),
        ("void_part", disc(s, 6, 8, 4), disc(s, 6, 9, 4), rect(s, 0, 8, 12, 16), 0.008),
        ("void_all", disc(s, 6, 8, 4), rect(s, 1, 1, 5, 5), full, 0.008),
        (
            "void_boundary_only",
            rect(s, 3, 3, 9, 12),
            rect(s, 3, 3, 9, 13),
            ~rect(s, 4, 4, 8, 11),
            0.008,
        ),
        ("one_row", rect((1, 20), 0, 3, 1, 9), rect((1, 20), 0, 5, 1, 12), None, 0.008),
        ("one_col", rect((20, 1), 3, 0, 9, 1), rect((20, 1), 4, 0, 15, 1), None, 0.008),
        ("radius_3", disc((150, 220), 70, 100, 40), disc((150, 220), 74, 103, 38), None, 0.008),
        (
            "radius_3_void",
            disc((150, 220), 70, 100, 40),
            rect((150, 220), 30, 60, 110, 150),
            rect((150, 220), 0, 0, 150, 90),
            0.008,
        ),
        ("bound_th_2", disc(s, 6, 8, 4), disc(s, 5, 6, 3), None, 2),
        ("bound_th_1_5", disc(s, 6, 8, 4), disc(s, 5, 6, 3), None, 1.5),
    ]
    for seed in range(6):
        shape = (18 + seed, 25 - seed)
        void = hash_noise(shape, 100 + seed, 15) if seed % 2 else None
        cases.append(
            (
                f"noise_{seed}",
                hash_noise(shape, seed, 30 + 5 * seed),
                hash_noise(shape, 50 + seed, 40),
                void,
                0.008,
            )
        )
    return [
        {"name": n, "gt": gt, "pred": pred, "void": void, "bound_th": th}
        for n, gt, pred, void, th in cases
    ]


def _palette() -> list[int]:
    colours = []
    for i in range(256):
        colours += [(i * 37) % 256, (i * 91) % 256, (i * 53) % 256]
    return colours


def _save_ids(path: Path, ids: np.ndarray, mode: str = "P") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8))
    if mode == "P":
        # putpalette turns the grey image into a palette image with the same indices.
        image.putpalette(_palette())
    image.save(path)


def _compose(
    shape: tuple[int, int], objects: list[np.ndarray], void: np.ndarray | None = None
) -> np.ndarray:
    """Id map: object k (1-based) painted in order, later ones on top; void painted 255 last."""
    ids = np.zeros(shape, dtype=np.uint8)
    for k, mask in enumerate(objects, start=1):
        ids[mask] = k
    if void is not None:
        ids[void] = 255
    return ids


def _compose_ids(shape: tuple[int, int], objects: dict[int, np.ndarray]) -> np.ndarray:
    ids = np.zeros(shape, dtype=np.uint8)
    for k, mask in objects.items():
        ids[mask] = k
    return ids


def davis_sequences() -> dict[str, dict]:
    """name -> {"gt": [T] id maps, "res_unsup": [T] id maps, "res_semi": [T] or None, "mode"}."""
    seqs: dict[str, dict] = {}

    # Two objects with a void band; three proposals (more proposals than objects).
    s = (48, 64)
    gt, res, semi = [], [], []
    for t in range(6):
        void = rect(s, 20, 0, 23, 64) if t % 2 == 0 else None
        gt.append(
            _compose(s, [disc(s, 14 + t, 16 + 2 * t, 8), rect(s, 26, 36 - t, 44, 58 - t)], void)
        )
        res.append(
            _compose_ids(
                s,
                {
                    1: rect(s, 27, 37 - t, 43, 60 - t),
                    2: hash_noise(s, t, 8),
                    3: disc(s, 15 + t, 17 + 2 * t, 7 + t % 3),
                },
            )
        )
        semi.append(
            _compose_ids(s, {1: disc(s, 13 + t, 16 + 2 * t, 9), 2: rect(s, 25, 35 - t, 44, 57 - t)})
        )
    seqs["blobs"] = {"gt": gt, "res_unsup": res, "res_semi": semi, "mode": "P"}

    # Three objects: one touching the border, a one-pixel object, a disc that disappears; one
    # proposal (fewer proposals than objects) and a fully empty result frame.
    s = (40, 40)
    gt, res, semi = [], [], []
    for t in range(5):
        objects = [
            rect(s, 0, 0, 10 + t, 14),
            pixel(s, 30, 5 + t),
            disc(s, 25, 28, 6) if t != 3 else np.zeros(s, bool),
        ]
        gt.append(_compose(s, objects, rect(s, 38, 30, 40, 40) if t == 1 else None))
        res.append(_compose_ids(s, {} if t == 2 else {1: disc(s, 25, 27, 6)}))
        semi.append(
            _compose_ids(
                s, {1: rect(s, 0, 0, 11, 14), 2: pixel(s, 30, 5 + t) if t % 2 else pixel(s, 31, 6)}
            )
        )
    seqs["border-pixel"] = {"gt": gt, "res_unsup": res, "res_semi": semi, "mode": "P"}

    # Ground-truth ids 1 and 3 (2 absent: an empty object); proposals with ids 2 and 5 only.
    # Grey (mode L) PNGs.
    s = (32, 48)
    gt, res, semi = [], [], []
    for t in range(9):
        gt.append(
            _compose_ids(s, {1: rect(s, 4, 4 + t, 14, 20 + t), 3: disc(s, 22, 34 - t, 5 + t % 2)})
        )
        res.append(
            _compose_ids(
                s,
                {
                    2: disc(s, 22, 33 - t, 5),
                    5: rect(s, 5, 5 + t, 14, 19 + t) if t < 7 else rect(s, 0, 0, 3, 3),
                },
            )
        )
        semi.append(_compose_ids(s, {3: disc(s, 21, 34 - t, 5), 1: rect(s, 4, 6 + t, 15, 20 + t)}))
    seqs["sparse-ids"] = {"gt": gt, "res_unsup": res, "res_semi": semi, "mode": "L"}

    # Pixel noise with void noise: many short boundaries.
    s = (36, 36)
    gt, res, semi = [], [], []
    for t in range(4):
        gt.append(_compose(s, [hash_noise(s, 10 + t, 35)], hash_noise(s, 20 + t, 10)))
        res.append(
            _compose_ids(
                s,
                {
                    1: hash_noise(s, 10 + t, 30) | hash_noise(s, 40 + t, 10),
                    2: hash_noise(s, 60 + t, 25),
                },
            )
        )
        semi.append(_compose_ids(s, {1: hash_noise(s, 11 + t, 35)}))
    seqs["noise"] = {"gt": gt, "res_unsup": res, "res_semi": semi, "mode": "P"}

    # No object in the first annotation: the sequence contributes no rows (unsupervised only).
    s = (20, 30)
    gt, res = [], []
    for t in range(4):
        gt.append(_compose_ids(s, {} if t == 0 else {1: rect(s, 5, 5, 12, 20)}))
        res.append(_compose_ids(s, {1: rect(s, 5, 6, 12, 20)}))
    seqs["empty-first"] = {"gt": gt, "res_unsup": res, "res_semi": None, "mode": "P"}
    return seqs


def write_davis_tree(root: Path) -> dict[str, Path]:
    """Writes a tiny DAVIS-2017 tree and result folders under root.

    Returns:
        {"davis_root", "results_unsupervised", "results_semi_supervised"} paths. The unsupervised
        set is DAVIS_UNSUPERVISED_SET (all sequences), the semi-supervised one
        DAVIS_SEMI_SUPERVISED_SET.
    """
    davis = root / "DAVIS"
    res_unsup = root / "results_unsupervised"
    res_semi = root / "results_semi_supervised"
    seqs = davis_sequences()
    sets = davis / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / f"{DAVIS_UNSUPERVISED_SET}.txt").write_text("".join(f"{n}\n" for n in seqs))
    (sets / f"{DAVIS_SEMI_SUPERVISED_SET}.txt").write_text(
        "".join(f"{n}\n" for n, seq in seqs.items() if seq["res_semi"] is not None)
    )
    res_unsup.mkdir()
    res_semi.mkdir()
    for name, seq in seqs.items():
        for t, gt in enumerate(seq["gt"]):
            frame = f"{t:05d}"
            jpg = davis / "JPEGImages" / "480p" / name / f"{frame}.jpg"
            jpg.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((*gt.shape, 3), 128, dtype=np.uint8)).save(jpg)
            _save_ids(
                davis / "Annotations_unsupervised" / "480p" / name / f"{frame}.png", gt, seq["mode"]
            )
            _save_ids(davis / "Annotations" / "480p" / name / f"{frame}.png", gt, seq["mode"])
            _save_ids(res_unsup / name / f"{frame}.png", seq["res_unsup"][t])
            if seq["res_semi"] is not None:
                _save_ids(res_semi / name / f"{frame}.png", seq["res_semi"][t])
    return {
        "davis_root": davis,
        "results_unsupervised": res_unsup,
        "results_semi_supervised": res_semi,
    }


def a2d_samples() -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[str]]:
    """Synthetic A2D samples and A2D-style ids (not in sorted order).

    Returns:
        (samples, ids): samples are (gt [H, W] bool, preds [Q, H, W] bool, scores [Q] float32);
        scores are multiples of 1/20 so that ties occur within and across samples; some predictions
        and one ground truth are empty, one sample has a single query.
    """
    samples = []
    ids = []
    for i in range(36):
        shape = (16 + 4 * (i % 3), 20 + 2 * (i % 4))
        h, w = shape
        y0, x0 = hash_int(i, 1, modulo=h // 2), hash_int(i, 2, modulo=w // 2)
        gt = rect(
            shape,
            y0,
            x0,
            y0 + 3 + hash_int(i, 3, modulo=h // 2),
            x0 + 3 + hash_int(i, 4, modulo=w // 2),
        )
        if i == 7:
            gt = np.zeros(shape, dtype=bool)
        n_queries = 1 if i == 11 else 5
        preds, scores = [], []
        for q in range(n_queries):
            kind = hash_int(i, q, 5, modulo=6)
            dy, dx = hash_int(i, q, 6, modulo=5) - 2, hash_int(i, q, 7, modulo=5) - 2
            if kind == 0:
                pred = np.zeros(shape, dtype=bool)
            elif kind == 1:
                pred = hash_noise(shape, 1000 * i + q, 30)
            else:
                pred = np.roll(gt, (dy, dx), axis=(0, 1)) | (
                    hash_noise(shape, 77 * i + q, 6) if kind == 2 else False
                )
                if kind == 4:
                    pred &= ~rect(shape, 0, 0, h, x0 + 2)
            preds.append(pred)
            scores.append(hash_int(i, q, 8, modulo=21) / 20.0)
        samples.append((gt, np.stack(preds), np.asarray(scores, dtype=np.float32)))
        ids.append(f"v_{hash_int(i, 9, modulo=1000):03d}x_f_{i % 4}_i_{i}")
    return samples, ids
