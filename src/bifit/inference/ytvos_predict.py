"""Ref-YouTube-VOS prediction (official protocol), the submission zip, and local held-out J&F.

Prediction, as ``inference_ytvos.py``: per video, frames resized to shorter side 360; the whole
video is one clip; per expression the query with the best mean score over frames is kept, its
stride-4 mask logits are resized bilinearly to the original frame size and thresholded at
sigmoid > 0.5; one ``L`` PNG (0 / 255) per frame at ``<split_dir>/<video>/<exp_id>/<frame>.png``.
With ``clip_length`` the video is cut into clips of that many frames and the query is chosen per
clip (bounded memory; the official Ref-YTVOS protocol uses no cut).

Submission: ``submission.zip`` holding ``Annotations/<video>/<exp_id>/<frame>.png``, the layout
the competition server expects (the official README renames ``valid`` to ``Annotations`` and zips).

Held-out validation (the valid-split masks are not public): the training videos of
:func:`bifit.data.ytvos.ytvos_heldout_split` (sorted ids, every ``every``-th from the first) are
predicted the same way and scored against the training annotations: per expression, J and F
(DAVIS definitions, boundary tolerance 0.008 of the diagonal) are averaged over all its video's
annotated frames (a frame where both masks are empty scores 1); J, F and J&F are the means over
expressions, J&F = (J + F) / 2, like the server's numbers. A model trained on the full training
split has seen these videos, so use this with models trained with the held-out videos left out.
"""

from __future__ import annotations

import csv
import json
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bifit.data.names import inside
from bifit.data.video import open_image
from bifit.data.ytvos import EvalVideo, read_id_map
from bifit.evaluation import contour_accuracy, region_similarity
from bifit.inference.core import EVAL_SHORT_SIZE, MASK_THRESHOLD, MAX_LONG_SIDE, masks_from_logits
from bifit.inference.protocols import predict_clips, save_mask_png
from bifit.modeling.bifit import BifitModel
from bifit.outputs import make_dirs, write_text, writing

__all__ = [
    "evaluate_ytvos_results",
    "expected_pngs",
    "format_ytvos_results",
    "predict_ytvos",
    "write_submission_zip",
    "write_ytvos_results",
]


def predict_ytvos(
    model: BifitModel,
    videos: Sequence[EvalVideo],
    split_dir: str | os.PathLike[str],
    *,
    short_side: int = EVAL_SHORT_SIZE,
    clip_length: int | None = None,
    expressions_per_pass: int | None = None,
    max_long_side: int | None = MAX_LONG_SIDE,
    progress: bool = True,
    desc: str = "ytvos",
) -> int:
    """Write the official per-frame PNGs of every expression of ``videos`` (see the module doc).

    Args:
        model: the model in eval mode.
        videos: videos to predict (e.g. ``ytvos_valid_videos(root)`` or a rank's share of them).
        split_dir: output folder, e.g. ``<output>/valid``.
        short_side, clip_length, expressions_per_pass, max_long_side: as
            :func:`bifit.inference.protocols.predict_clips` (official: 360, the whole video, any, any).
        progress: show a progress bar over videos.
        desc: progress bar label.

    Returns:
        The number of PNG files written.
    """
    split_dir = Path(split_dir)
    written = 0
    for video in tqdm(videos, desc=desc, unit="video", disable=not progress):
        if not video.expressions:
            continue
        clips = predict_clips(
            model, video, short_side=short_side, clip_length=clip_length,
            expressions_per_pass=expressions_per_pass, max_long_side=max_long_side,
        )
        for clip, size, pred in clips:
            for e, expression in enumerate(video.expressions):
                masks = masks_from_logits(pred.mask_logits[e], size, MASK_THRESHOLD).cpu().numpy()
                folder = inside(split_dir, split_dir / video.video / expression.exp_id)
                make_dirs(folder)
                for t, mask in zip(clip, masks, strict=True):
                    save_mask_png(mask, folder / f"{video.frame_names[t]}.png")
                    written += 1
    return written


def expected_pngs(videos: Sequence[EvalVideo]) -> list[Path]:
    """Relative paths ``<video>/<exp_id>/<frame>.png`` a complete prediction holds."""
    return [
        Path(v.video) / e.exp_id / f"{name}.png" for v in videos for e in v.expressions for name in v.frame_names
    ]


def write_submission_zip(
    split_dir: str | os.PathLike[str], videos: Sequence[EvalVideo], zip_path: str | os.PathLike[str]
) -> Path:
    """Zip the predictions of ``videos`` as ``Annotations/<video>/<exp_id>/<frame>.png``.

    Raises:
        FileNotFoundError: a PNG of some expression is missing (the server rejects partial zips).
        UnsafeNameError: a PNG path resolves outside ``split_dir`` (a ``..`` id or a link out of it).
    """
    split_dir, zip_path = Path(split_dir), Path(zip_path)
    files = expected_pngs(videos)
    # Names are checked when the videos are read; this also catches links out of split_dir.
    paths = [inside(split_dir, split_dir / f) for f in files]
    missing = [f for f, path in zip(files, paths) if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} prediction PNG(s) missing under {split_dir}, e.g. {missing[0]}; run the prediction first"
        )
    tmp = zip_path.with_name(f".{zip_path.name}.partial")
    try:
        with writing(zip_path), zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for f, path in zip(files, paths):
                archive.write(path, (Path("Annotations") / f).as_posix())
        with writing(zip_path):
            os.replace(tmp, zip_path)
    finally:
        tmp.unlink(missing_ok=True)
    return zip_path


def _read_prediction(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"prediction not found: {path}")
    with open_image(path) as img:
        return np.array(img.convert("L")) > 0


def evaluate_ytvos_results(
    videos: Sequence[EvalVideo], results_dir: str | os.PathLike[str], *, progress: bool = True
) -> dict[str, Any]:
    """J&F of predicted PNGs against the annotations (held-out protocol of the module doc).

    Args:
        videos: videos with ``mask_paths`` and per-expression ``obj_id`` (``ytvos_heldout_videos``).
        results_dir: folder with ``<video>/<exp_id>/<frame>.png``.

    Returns:
        ``{"global": {"J&F", "J", "F", "num_expressions"}, "per_expression": [{"video", "exp_id",
        "J", "F"}, ...]}``.
    """
    results_dir = Path(results_dir)
    rows = []
    for video in tqdm(videos, desc="J&F", unit="video", disable=not progress):
        if video.mask_paths is None:
            raise ValueError(f"video {video.video} has no ground-truth masks to evaluate against")
        gt_ids = [read_id_map(p) for p in video.mask_paths]
        for expression in video.expressions:
            if expression.obj_id is None:
                raise ValueError(f"video {video.video}, expression {expression.exp_id}: no object id")
            j_values, f_values = [], []
            for name, ids in zip(video.frame_names, gt_ids, strict=True):
                pred = _read_prediction(results_dir / video.video / expression.exp_id / f"{name}.png")
                if pred.shape != ids.shape:
                    raise ValueError(f"{video.video}/{expression.exp_id}/{name}.png is {pred.shape}, gt {ids.shape}")
                gt = ids == expression.obj_id
                j_values.append(region_similarity(gt, pred))
                f_values.append(contour_accuracy(gt, pred))
            rows.append(
                {
                    "video": video.video,
                    "exp_id": expression.exp_id,
                    "J": float(np.mean(j_values)),
                    "F": float(np.mean(f_values)),
                }
            )
    j = float(np.mean([r["J"] for r in rows])) if rows else math.nan
    f = float(np.mean([r["F"] for r in rows])) if rows else math.nan
    return {"global": {"J&F": (j + f) / 2, "J": j, "F": f, "num_expressions": len(rows)}, "per_expression": rows}


def write_ytvos_results(results: dict[str, Any], folder: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``<name>_results.json`` (global and per expression) and ``<name>_per-expression.csv``."""
    folder = Path(folder)
    json_path = folder / f"{name}_results.json"
    csv_path = folder / f"{name}_per-expression.csv"
    write_text(json_path, json.dumps(results, indent=2) + "\n")
    with writing(csv_path), csv_path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Video", "Expression", "J", "F"])
        for row in results["per_expression"]:
            writer.writerow([row["video"], row["exp_id"], f"{row['J']:.5f}", f"{row['F']:.5f}"])
    return json_path, csv_path


def format_ytvos_results(results: dict[str, Any], name: str) -> str:
    """One printable line of the global numbers."""
    g = results["global"]
    return (
        f"{name}: J&F {g['J&F']:.4f}  J {g['J']:.4f}  F {g['F']:.4f}  ({g['num_expressions']} expressions)"
    )
