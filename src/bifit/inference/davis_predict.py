"""Ref-DAVIS17 prediction and evaluation (official protocol of ``inference_davis.py``).

Per video of a prepared Ref-DAVIS17 split (:func:`bifit.data.davis.prepare_davis`), frames are
resized to shorter side 360 and cut into clips of 24 frames. Per clip and per expression the
query with the best mean score over the clip is kept and its mask logits are resized bilinearly to
the original frame size, then turned into probabilities. For each of the four annotation sets
(``anno_k`` uses expression ``obj * 4 + k`` of every object) the object probabilities below 0.5
are zeroed, a constant 0.1 background plane is put in front and the per-pixel argmax is the id
map (0 = background, i = object i), saved as a palette PNG at
``<split_dir>/anno_<k>/<video>/<frame>.png`` with the palette of the video's annotations.

Evaluation: each ``anno_k`` folder is scored with the DAVIS-2017 toolkit's unsupervised protocol
(:func:`bifit.evaluation.evaluate_davis`); the reported Ref-DAVIS17 number is the mean of the four
global results.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from bifit.data.davis import NUM_ANNOTATIONS
from bifit.data.names import inside
from bifit.data.video import open_image
from bifit.data.ytvos import EvalVideo
from bifit.evaluation import average_global_results, davis_csv_texts, evaluate_davis
from bifit.inference.core import EVAL_SHORT_SIZE, MAX_LONG_SIDE, upsample_logits
from bifit.inference.protocols import davis_palette, predict_clips, save_palette_png
from bifit.modeling.bifit import BifitModel
from bifit.outputs import make_dirs, write_text

__all__ = [
    "DAVIS_CLIP_LENGTH",
    "combine_objects",
    "evaluate_davis_annotators",
    "format_davis_summary",
    "predict_davis",
]

#: Frames per clip in the official Ref-DAVIS17 inference.
DAVIS_CLIP_LENGTH = 24
#: Object probabilities below this are zeroed before the argmax.
OBJECT_THRESHOLD = 0.5
#: Score of the background plane of the argmax.
BACKGROUND_SCORE = 0.1


def combine_objects(probabilities: Tensor) -> Tensor:
    """Merge per-object probabilities into an id map, as the official DAVIS script does.

    Args:
        probabilities: [N, T, H, W] mask probabilities of N objects.

    Returns:
        uint8 [T, H, W]: 0 where no object reaches 0.5, else 1 + the index of the most probable
        object (the first on ties).
    """
    if probabilities.dim() != 4:
        raise ValueError(f"probabilities must be [N, T, H, W], got {list(probabilities.shape)}")
    scores = probabilities.masked_fill(probabilities < OBJECT_THRESHOLD, 0.0)
    background = torch.full_like(scores[:1], BACKGROUND_SCORE)
    return torch.cat([background, scores]).argmax(0).to(torch.uint8)


def _palette_of(video: EvalVideo) -> list[int]:
    """The palette of the video's first annotation PNG (DAVIS's own), else the DAVIS colour map."""
    if video.mask_paths and video.mask_paths[0].is_file():
        with open_image(video.mask_paths[0]) as img:
            palette = img.getpalette()
        if palette:
            return palette
    return davis_palette()


def predict_davis(
    model: BifitModel,
    videos: Sequence[EvalVideo],
    split_dir: str | os.PathLike[str],
    *,
    short_side: int = EVAL_SHORT_SIZE,
    clip_length: int | None = DAVIS_CLIP_LENGTH,
    expressions_per_pass: int | None = None,
    max_long_side: int | None = MAX_LONG_SIDE,
    progress: bool = True,
    desc: str = "davis",
) -> int:
    """Write the four annotators' palette PNGs of ``videos`` (see the module doc).

    Args:
        model: the model in eval mode.
        videos: videos of a prepared split (``davis_eval_videos(root, "valid")`` or a rank's share);
            each with 4 expressions per object, in the order :func:`prepare_davis` writes them.
        split_dir: output folder, e.g. ``<output>/valid``.
        short_side, clip_length, expressions_per_pass, max_long_side: as
            :func:`bifit.inference.protocols.predict_clips` (official: 360, 24 frames, any, any).
        progress: show a progress bar over videos.
        desc: progress bar label.

    Returns:
        The number of PNG files written.
    """
    split_dir = Path(split_dir)
    written = 0
    for video in tqdm(videos, desc=desc, unit="video", disable=not progress):
        if not video.expressions or len(video.expressions) % NUM_ANNOTATIONS:
            raise ValueError(
                f"video {video.video} has {len(video.expressions)} expressions; Ref-DAVIS17 needs "
                f"{NUM_ANNOTATIONS} per object (prepare the data with `bifit data prepare davis`)"
            )
        num_objects = len(video.expressions) // NUM_ANNOTATIONS
        palette = _palette_of(video)
        folders = [inside(split_dir, split_dir / f"anno_{k}" / video.video) for k in range(NUM_ANNOTATIONS)]
        for folder in folders:
            make_dirs(folder)
        clips = predict_clips(
            model, video, short_side=short_side, clip_length=clip_length,
            expressions_per_pass=expressions_per_pass, max_long_side=max_long_side,
        )
        for clip, size, pred in clips:
            for k, folder in enumerate(folders):
                rows = [obj * NUM_ANNOTATIONS + k for obj in range(num_objects)]
                probabilities = upsample_logits(pred.mask_logits[rows], size).sigmoid()
                ids = combine_objects(probabilities).cpu().numpy()
                for t, frame_ids in zip(clip, ids, strict=True):
                    save_palette_png(frame_ids, palette, folder / f"{video.frame_names[t]}.png")
                    written += 1
    return written


def evaluate_davis_annotators(
    davis_root: str | os.PathLike[str],
    split_dir: str | os.PathLike[str],
    *,
    set: str = "val",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``<split_dir>/anno_0..3`` (unsupervised DAVIS-2017 protocol) and average them.

    Writes the toolkit's two CSVs into every ``anno_k`` folder, plus ``global_results-<set>.csv``
    of the mean into ``split_dir`` and ``ref-davis_results.json`` (all numbers) into ``split_dir``.

    Returns:
        ``{"annotators": [global results of anno_0..3], "mean": mean global results}``, each a
        dict over the toolkit's columns (``J&F-Mean``, ``J-Mean``, ...).
    """
    split_dir = Path(split_dir)
    per_annotator = []
    for k in range(NUM_ANNOTATIONS):
        folder = split_dir / f"anno_{k}"
        per_annotator.append(evaluate_davis(davis_root, folder, set, "unsupervised", progress=progress))
    mean = average_global_results(per_annotator)
    summary = {"annotators": [r["global"] for r in per_annotator], "mean": mean}
    write_text(split_dir / f"global_results-{set}.csv", davis_csv_texts({"global": mean, "per_sequence": []})[0])
    write_text(split_dir / "ref-davis_results.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_davis_summary(summary: dict[str, Any]) -> str:
    """Printable lines: each annotator's J&F, J, F and their mean (the reported number)."""
    lines = []
    for k, result in enumerate(summary["annotators"]):
        lines.append(
            f"anno_{k}: J&F {result['J&F-Mean']:.4f}  J {result['J-Mean']:.4f}  F {result['F-Mean']:.4f}"
        )
    m = summary["mean"]
    lines.append(f"Ref-DAVIS17 (mean of the 4 annotators): J&F {m['J&F-Mean']:.4f}  J {m['J-Mean']:.4f}  "
                 f"F {m['F-Mean']:.4f}")
    return "\n".join(lines)
