"""A2D-Sentences: one sample per (expression, annotated frame), a clip around that frame.

Expected layout::

    <root>/Release/clips320H/<video>.mp4
    <root>/Release/videoset.csv                     (no header; column 0 video id, column 8 subset: 0 train, 1 test)
    <root>/text_annotations/a2d_annotation.txt      (CSV with header video_id,instance_id,query)
    <root>/text_annotations/a2d_missed_videos.txt   (one video id per line, excluded)
    <root>/text_annotations/a2d_annotation_with_instances/<video>/<frame:05d>.h5
    <root>/a2d_sentences_single_frame_{train,test}_annotations.json   (optional, see below)

Samples are ``(query, video_id, frame_idx, instance_id)`` with 1-based ``frame_idx``, read from
the samples JSON when present (the files MTTR distributes) or else built from the raw annotations
exactly as MTTR builds them (:func:`build_a2d_samples`). Each ``.h5`` holds ``instance`` (the
instance ids) and ``reMask`` (MATLAB order: [N, W, H], or [W, H] for a single instance).

Clips: training samples the official way around the annotated frame
(:func:`~bifit.data.ytvos.sample_train_indices`); evaluation takes ``num_frames`` consecutive
frames centred on it (edge frames repeated). Only the annotated frame has a target.

Decoded videos go through a :class:`~bifit.data.video.VideoFrameCache` (``cache_dir`` for the
lossless on-disk cache, plus an in-memory LRU of recent videos).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bifit.data.names import safe_name
from bifit.data.targets import boxes_from_masks
from bifit.data.transforms import Transform, make_eval_transforms, make_train_transforms
from bifit.data.video import VideoFrameCache
from bifit.data.ytvos import ResampledClips, clean_caption, load_json, sample_train_indices

Subset = Literal["train", "test"]
_SUBSET_CODES = {"train": 0, "test": 1}
#: A duplicated instance row in a2d_annotation.txt (video T6bNPuKV-wY) that MTTR drops.
_BAD_INSTANCE_ID = "1 (copy)"


@dataclass(frozen=True)
class A2DSample:
    """One A2D-Sentences sample; ``frame_idx`` is 1-based, as in the dataset."""

    query: str
    video_id: str
    frame_idx: int
    instance_id: int


def a2d_image_id(video_id: str, frame_idx: int, instance_id: int) -> str:
    """The official sample id ``v_<video>_f_<frame>_i_<instance>``."""
    return f"v_{video_id}_f_{frame_idx}_i_{instance_id}"


def centered_window(center: int, num_frames: int, first: int, last: int) -> list[int]:
    """``num_frames`` consecutive indices around ``center`` (from ``center - num_frames // 2``),
    clamped to ``[first, last]`` so out-of-range positions repeat the edge frames."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    start = center - num_frames // 2
    return [min(max(i, first), last) for i in range(start, start + num_frames)]


def read_a2d_masks(path: str | os.PathLike[str]) -> tuple[list[int], np.ndarray]:
    """Instance ids and masks of one annotated frame.

    Returns:
        ``(instance_ids, masks)``: N ints and bool [N, H, W].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"A2D mask annotation not found: {path}")
    with h5py.File(path, "r") as f:
        if "instance" not in f or "reMask" not in f:
            raise ValueError(f"{path} must hold 'instance' and 'reMask' datasets")
        instances = [int(i) for i in np.asarray(f["instance"]).reshape(-1)]
        masks = np.asarray(f["reMask"])
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[0] != len(instances):
        raise ValueError(f"{path}: reMask shape {masks.shape} does not match {len(instances)} instances")
    return instances, masks.transpose(0, 2, 1) != 0


def _read_csv_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return [row for row in csv.reader(f) if row]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not valid UTF-8 text: {exc}") from None


def build_a2d_samples(root: str | os.PathLike[str], subset: Subset) -> list[A2DSample]:
    """Build the samples of a subset from the raw annotations, as MTTR does.

    Videos of the subset (``videoset.csv``) not listed in ``a2d_missed_videos.txt``; for each of
    their expressions (in ``a2d_annotation.txt`` order) and each annotated frame (sorted) whose
    ``.h5`` contains the expression's instance, one sample; queries lower-cased.
    """
    if subset not in _SUBSET_CODES:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    root = Path(root)
    videoset = root / "Release" / "videoset.csv"
    rows = _read_csv_rows(videoset)
    missed_path = root / "text_annotations" / "a2d_missed_videos.txt"
    if not missed_path.is_file():
        raise FileNotFoundError(f"file not found: {missed_path}")
    missed = set(missed_path.read_text().split())
    try:
        used = {row[0] for row in rows if row[0] not in missed and int(row[8]) == _SUBSET_CODES[subset]}
    except (IndexError, ValueError):
        raise ValueError(f"{videoset}: expected 9 columns, the last an integer subset") from None
    for video_id in used:
        safe_name(video_id, "video id", videoset)

    annotations = _read_csv_rows(root / "text_annotations" / "a2d_annotation.txt")
    header, records = annotations[0], annotations[1:]
    try:
        columns = [header.index(name) for name in ("video_id", "instance_id", "query")]
    except ValueError:
        raise ValueError(f"a2d_annotation.txt header must name video_id, instance_id, query; got {header}") from None

    masks_dir = root / "text_annotations" / "a2d_annotation_with_instances"
    instances_by_video: dict[str, list[tuple[int, list[int]]]] = {}
    samples = []
    for record in records:
        video_id, instance_text, query = (record[c] for c in columns)
        if video_id not in used or instance_text == _BAD_INSTANCE_ID:
            continue
        if video_id not in instances_by_video:
            instances_by_video[video_id] = [
                (int(p.stem), read_a2d_masks(p)[0]) for p in sorted((masks_dir / video_id).glob("*.h5"))
            ]
        instance_id = int(instance_text)
        for frame_idx, instances in instances_by_video[video_id]:
            if instance_id in instances:
                samples.append(A2DSample(query.lower(), video_id, frame_idx, instance_id))
    return samples


def load_a2d_samples(root: str | os.PathLike[str], subset: Subset) -> list[A2DSample]:
    """Samples from ``a2d_sentences_single_frame_<subset>_annotations.json`` if present, else built."""
    path = Path(root) / f"a2d_sentences_single_frame_{subset}_annotations.json"
    if not path.is_file():
        return build_a2d_samples(root, subset)
    entries = load_json(path)
    try:
        samples = [A2DSample(str(q), str(v), int(f), int(i)) for q, v, f, i in entries]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: expected a list of [query, video_id, frame_idx, instance_id]") from None
    for sample in samples:
        safe_name(sample.video_id, "video id", path)
    return samples


def save_a2d_samples(samples: Sequence[A2DSample], path: str | os.PathLike[str]) -> None:
    """Write samples in the MTTR JSON format (a list of [query, video_id, frame_idx, instance_id])."""
    Path(path).write_text(json.dumps([[s.query, s.video_id, s.frame_idx, s.instance_id] for s in samples]))


class A2DSentencesDataset(ResampledClips):
    """A2D-Sentences clips with the target of their annotated frame.

    Args:
        root: dataset root (see the module docstring).
        subset: ``"train"`` (official training sampler and transforms) or ``"test"`` (centred
            window, eval transforms).
        num_frames: frames per clip.
        max_skip: largest offset of the local neighbours when training.
        transforms: overrides the subset's default transforms.
        seed: base seed; item ``i`` of epoch ``e`` uses ``default_rng((seed, e, i))``.
        cache_dir: on-disk decoded-frame cache (``None``: in-memory LRU only).
        max_videos_in_memory: size of the in-memory LRU of decoded videos.
        samples: use these instead of :func:`load_a2d_samples`.

    ``dataset[i]`` returns ``(video, target)``: video float32 [T, 3, H, W]; target ``frames_idx``
    int64 [T], ``valid_indices`` int64 [1] (position of the annotated frame in the clip),
    ``labels`` int64 [1] (0), ``boxes`` float32 [1, 4] normalised cxcywh, ``masks`` bool
    [1, H, W], ``valid`` int32 [1], ``caption``, ``orig_size`` / ``size`` int64 [2],
    ``image_id`` ``v_<video>_f_<frame>_i_<instance>``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        subset: Subset = "train",
        *,
        num_frames: int = 6,
        max_skip: int = 3,
        transforms: Transform | None = None,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        max_videos_in_memory: int = 4,
        samples: Sequence[A2DSample] | None = None,
    ) -> None:
        if subset not in _SUBSET_CODES:
            raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"A2D-Sentences root not found: {self.root}")
        self.subset = subset
        self.num_frames = num_frames
        self.max_skip = max_skip
        if transforms is None:
            transforms = make_train_transforms() if subset == "train" else make_eval_transforms()
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0
        self.samples = list(samples) if samples is not None else load_a2d_samples(self.root, subset)
        self.frame_cache = VideoFrameCache(cache_dir, max_videos_in_memory)
        self.videos_dir = self.root / "Release" / "clips320H"
        self.masks_dir = self.root / "text_annotations" / "a2d_annotation_with_instances"

    @property
    def resamples(self) -> bool:
        # In evaluation the sample is always returned as is: the official loop would silently evaluate a
        # different sample.
        return self.subset == "train"

    def _load(self, sample: A2DSample, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        video_path = self.videos_dir / f"{sample.video_id}.mp4"
        frames = self.frame_cache.get(sample.video_id, video_path)
        vid_len = len(frames)
        frame_id = sample.frame_idx - 1  # annotations are 1-based
        if not 0 <= frame_id < vid_len:
            raise ValueError(f"{video_path} has {vid_len} frames; annotated frame {sample.frame_idx} is outside it")
        if self.subset == "train":
            indices = sample_train_indices(frame_id, vid_len, self.num_frames, self.max_skip, rng)
        else:
            indices = centered_window(frame_id, self.num_frames, 0, vid_len - 1)
        images = [Image.fromarray(np.asarray(frames[i])) for i in indices]

        instances, masks = read_a2d_masks(self.masks_dir / sample.video_id / f"{sample.frame_idx:05d}.h5")
        if sample.instance_id not in instances:
            raise ValueError(
                f"instance {sample.instance_id} not annotated in frame {sample.frame_idx} of {sample.video_id}"
            )
        mask = torch.from_numpy(masks[instances.index(sample.instance_id)])[None]
        image_id = a2d_image_id(sample.video_id, sample.frame_idx, sample.instance_id)
        target = one_frame_target(images, mask, indices, frame_id, sample.query, image_id, sample.video_id)
        return self.transforms(images, target, rng)


def one_frame_target(
    images: Sequence[Image.Image],
    mask: Tensor,
    indices: Sequence[int],
    annotated: int,
    query: str,
    image_id: str,
    video_id: str,
) -> dict[str, Any]:
    """The target of a clip of which one frame is annotated (A2D- and JHMDB-Sentences, official format).

    Args:
        images: the clip's T frames.
        mask: bool [1, H, W], the referred object in the annotated frame (the frames' size).
        indices: the T frame numbers of the clip; `annotated` is one of them.
        query: the referring expression (cleaned here as the official loaders clean it).
    Returns:
        ``frames_idx`` int64 [T], ``valid_indices`` int64 [1], ``labels`` int64 [1] (0), ``boxes``
        float32 [1, 4] normalised cxcywh, ``masks`` [1, H, W], ``valid`` int32 [1], ``caption``,
        ``orig_size`` / ``size`` int64 [2], ``image_id``.
    Raises:
        ValueError: the frames and the mask differ in size.
    """
    height, width = mask.shape[-2:]
    if images[0].size != (width, height):
        raise ValueError(f"{video_id}: frame size {images[0].size} != mask size {(width, height)}")
    boxes, valid = boxes_from_masks(mask)
    return {
        "frames_idx": torch.tensor(indices, dtype=torch.int64),
        "valid_indices": torch.tensor([indices.index(annotated)]),
        "labels": torch.zeros(1, dtype=torch.int64),
        "boxes": boxes,
        "masks": mask,
        "valid": valid,
        "caption": clean_caption(query),
        "orig_size": torch.tensor([height, width]),
        "size": torch.tensor([height, width]),
        "image_id": image_id,
    }
