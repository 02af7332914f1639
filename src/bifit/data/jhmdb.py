"""JHMDB-Sentences (evaluation only): a clip centred on one chosen frame per sample.

Expected layout::

    <root>/Rename_Images/<action>/<video>/<frame:05d>.png     (1-based frame numbers)
    <root>/puppet_mask/<action>/<video>/puppet_mask.mat        (``part_mask``: [H, W, T])
    <root>/jhmdb_annotation.txt                                (CSV with header video_id,query)
    <root>/jhmdb_sentences_samples_metadata.json

The samples metadata (distributed by MTTR) is a list of
``[video_id, chosen_frame_path, video_masks_path, video_total_frames, query]``. Its paths carry
whatever prefix they were generated under; they are resolved against ``root`` from their
``Rename_Images`` / ``puppet_mask`` component on (the official loader prepends a hard-coded
``data/``). :func:`build_jhmdb_samples` recreates such a list (3 random frames per expression,
seeded) if the file is missing.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import scipy.io
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bifit.data.a2d import centered_window, one_frame_target
from bifit.data.names import UnsafeNameError, safe_name
from bifit.data.transforms import Transform, make_eval_transforms
from bifit.data.video import open_rgb
from bifit.data.ytvos import load_json

METADATA_FILE = "jhmdb_sentences_samples_metadata.json"
FRAMES_PER_EXPRESSION = 3


@dataclass(frozen=True)
class JHMDBSample:
    """One JHMDB-Sentences sample (paths absolute; ``frame_idx`` 1-based)."""

    video_id: str
    frames_dir: Path
    frame_idx: int
    masks_path: Path
    total_frames: int
    query: str


def jhmdb_image_id(video_id: str, frame_idx: int) -> str:
    """The official sample id ``v_<video>_f_<frame>``."""
    return f"v_{video_id}_f_{frame_idx}"


def _relocate(stored: str, root: Path, anchor: str, source: Path) -> Path:
    """``root / <anchor>/...``: the part of a metadata path from its ``anchor`` folder on, every
    component after it a plain name (so the path stays inside ``root/<anchor>``)."""
    parts = PurePosixPath(stored.replace("\\", "/")).parts
    if anchor not in parts:
        raise ValueError(f"path {stored!r} in the samples metadata has no {anchor!r} component")
    tail = parts[parts.index(anchor) + 1 :]
    for part in tail:
        safe_name(part, f"component of the path {stored!r}", source)
    return root.joinpath(anchor, *tail)


def load_jhmdb_samples(
    root: str | os.PathLike[str], metadata_file: str | os.PathLike[str] | None = None
) -> list[JHMDBSample]:
    """Samples from the metadata JSON (default ``<root>/jhmdb_sentences_samples_metadata.json``)."""
    root = Path(root)
    path = Path(metadata_file) if metadata_file is not None else root / METADATA_FILE
    samples = []
    for entry in load_json(path):
        try:
            video_id, frame_path, masks_path, total_frames, query = entry
            frame = _relocate(frame_path, root, "Rename_Images", path)
            samples.append(
                JHMDBSample(
                    video_id=str(video_id),
                    frames_dir=frame.parent,
                    frame_idx=int(frame.stem),
                    masks_path=_relocate(masks_path, root, "puppet_mask", path),
                    total_frames=int(total_frames),
                    query=str(query),
                )
            )
        except UnsafeNameError:
            raise
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: bad sample {entry!r}: {exc}") from None
    return samples


def read_part_masks(path: str | os.PathLike[str]) -> np.ndarray:
    """All masks of a video from ``puppet_mask.mat`` as bool [T, H, W]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JHMDB puppet mask not found: {path}")
    data = scipy.io.loadmat(str(path))
    if "part_mask" not in data:
        raise ValueError(f"{path} has no 'part_mask' variable")
    masks = np.asarray(data["part_mask"])
    if masks.ndim == 2:
        masks = masks[..., None]
    if masks.ndim != 3:
        raise ValueError(f"{path}: part_mask must be [H, W, T], got shape {masks.shape}")
    return masks.transpose(2, 0, 1) != 0


def build_jhmdb_samples(root: str | os.PathLike[str], seed: int = 0) -> list[JHMDBSample]:
    """Recreate the samples metadata as MTTR does: per expression of ``jhmdb_annotation.txt``,
    3 distinct frames (sorted) among the video's frames that have a mask, drawn with ``seed``."""
    root = Path(root)
    ann_path = root / "jhmdb_annotation.txt"
    if not ann_path.is_file():
        raise FileNotFoundError(f"file not found: {ann_path}")
    with ann_path.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.DictReader(f)]
    if rows and not {"video_id", "query"} <= set(rows[0]):
        raise ValueError(f"{ann_path} header must name video_id and query")
    frame_dirs = {p.name: p for p in sorted((root / "Rename_Images").glob("*/*")) if p.is_dir()}
    mask_files = {p.parent.name: p for p in sorted((root / "puppet_mask").glob("*/*/puppet_mask.mat"))}
    rng = np.random.default_rng(seed)
    samples = []
    for row in rows:
        video_id = row["video_id"]
        if video_id not in frame_dirs or video_id not in mask_files:
            raise FileNotFoundError(f"frames or puppet_mask.mat of JHMDB video {video_id} not found under {root}")
        frames = sorted(frame_dirs[video_id].glob("*.png"))[: len(read_part_masks(mask_files[video_id]))]
        if len(frames) < FRAMES_PER_EXPRESSION:
            raise ValueError(f"JHMDB video {video_id} has fewer than {FRAMES_PER_EXPRESSION} frames with masks")
        for i in sorted(rng.choice(len(frames), FRAMES_PER_EXPRESSION, replace=False)):
            samples.append(
                JHMDBSample(
                    video_id, frame_dirs[video_id], int(frames[i].stem), mask_files[video_id], len(frames), row["query"]
                )
            )
    return samples


class JHMDBSentencesDataset(Dataset):
    """JHMDB-Sentences evaluation clips.

    Args:
        root: dataset root (see the module docstring).
        num_frames: frames per clip, centred on the chosen frame (edges repeated).
        transforms: defaults to the official evaluation transform (short side 360, max 640).
        samples: use these instead of :func:`load_jhmdb_samples`.

    ``dataset[i]`` returns ``(video, target)``: video float32 [T, 3, H, W]; target ``frames_idx``
    int64 [T] (1-based frame numbers), ``valid_indices`` int64 [1], ``labels`` int64 [1] (0; the
    official target has none, added for a uniform interface), ``boxes`` float32 [1, 4] normalised
    cxcywh, ``masks`` bool [1, H, W], ``valid`` int32 [1], ``caption``, ``orig_size`` / ``size``
    int64 [2], ``image_id`` ``v_<video>_f_<frame>``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        num_frames: int = 6,
        transforms: Transform | None = None,
        samples: list[JHMDBSample] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"JHMDB-Sentences root not found: {self.root}")
        self.num_frames = num_frames
        self.transforms = transforms if transforms is not None else make_eval_transforms()
        self.samples = samples if samples is not None else load_jhmdb_samples(self.root)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        # Evaluation transforms draw nothing; a fixed generator keeps custom ones deterministic.
        return self.get_item(index, np.random.default_rng(index))

    def get_item(self, index: int, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        """Sample ``index``; ``rng`` feeds the transforms."""
        sample = self.samples[index]
        indices = centered_window(sample.frame_idx, self.num_frames, 1, sample.total_frames)
        images = []
        for i in indices:
            path = sample.frames_dir / f"{i:05d}.png"
            if not path.is_file():
                raise FileNotFoundError(f"JHMDB frame not found: {path}")
            images.append(open_rgb(path))
        all_masks = read_part_masks(sample.masks_path)
        if not 1 <= sample.frame_idx <= len(all_masks):
            raise ValueError(f"{sample.masks_path} has {len(all_masks)} masks; frame {sample.frame_idx} has none")
        mask = torch.from_numpy(np.ascontiguousarray(all_masks[sample.frame_idx - 1]))[None]
        image_id = jhmdb_image_id(sample.video_id, sample.frame_idx)
        target = one_frame_target(images, mask, indices, sample.frame_idx, sample.query, image_id, sample.video_id)
        return self.transforms(images, target, rng)
