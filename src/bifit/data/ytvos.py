"""Ref-YouTube-VOS: the training dataset, the valid-split listing and a local held-out split.

Expected layout (as distributed by the competition)::

    <root>/
      meta_expressions/{train,valid,test}/meta_expressions.json
      train/JPEGImages/<video>/<frame>.jpg
      train/Annotations/<video>/<frame>.png      (palette PNG: pixel value = object id)
      train/meta.json                            ({"videos": {vid: {"objects": {id: {"category"}}}}})
      valid/JPEGImages/<video>/<frame>.jpg

Training samples are built as the official loader builds them: for every video, every expression
and every ``num_frames``-th frame, one sample whose clip holds that frame, two local neighbours
and random global frames (:func:`sample_train_indices`). The referred object's mask is
``annotation == obj_id``; frames where it is absent (or degenerate after the transforms) are
``valid = 0``. If no frame of a clip is valid after the transforms another sample is drawn, as in
the official code.

Randomness: item ``i`` of epoch ``e`` uses ``numpy.random.default_rng((seed, e, i))``; call
:meth:`RefVOSDataset.set_epoch` before each epoch (with non-persistent DataLoader workers).

Held-out split for local validation (the valid-split masks are not public): the training videos
sorted by id, every one whose position ``% every == 0`` (``every=20``: 1 in 20 videos) is held out;
see :func:`ytvos_heldout_split`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bifit.data.names import UnsafeNameError, safe_name
from bifit.data.targets import boxes_from_masks
from bifit.data.transforms import Transform, make_train_transforms
from bifit.data.video import open_image, open_rgb
from bifit.modeling.text_encoder import check_utf8

#: Draws of a new sample when a clip has no valid frame before giving up (the official loop is
#: unbounded; a dataset without any visible object would hang it).
MAX_RESAMPLES = 100


def clean_caption(caption: str) -> str:
    """Lower-case and collapse whitespace, as the official loaders do."""
    return " ".join(caption.lower().split())


def load_json(path: Path) -> Any:
    """Read a JSON file with a clear error if it is missing, not UTF-8 or malformed."""
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not valid UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None


def load_videos_dict(path: Path) -> dict[str, Any]:
    """The ``"videos"`` mapping of a ``meta.json`` / ``meta_expressions.json`` file."""
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
        raise ValueError(f'{path} must hold a JSON object with a "videos" mapping')
    return data["videos"]


def read_id_map(path: Path) -> np.ndarray:
    """A palette (or grayscale) annotation PNG as a uint8 [H, W] map of object ids."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    with open_image(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"annotation {path} must be a palette or grayscale PNG, got mode {img.mode}")
        return np.array(img)


def sample_train_indices(
    frame_id: int, vid_len: int, num_frames: int, max_skip: int, rng: np.random.Generator
) -> list[int]:
    """Frame indices of one training clip, sorted, as the official loaders sample them.

    The clip holds ``frame_id``, one frame ``U{1..max_skip}`` before and one after it (clamped to
    the video), then ``num_frames - 3`` distinct "global" frames drawn from outside the local span
    (the span's last frame included, as in the official code) or, if too few, from the whole
    video. The sorted list is truncated to ``num_frames``; it may repeat frames in short videos.
    ``num_frames == 1`` gives ``[frame_id]``. (The official code hard-codes 3 as the local skip;
    ``max_skip`` defaults to that value. Where it would fail on a video shorter than half the
    global count, frames are drawn with replacement instead.)
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if max_skip < 1:
        raise ValueError(f"max_skip must be >= 1, got {max_skip}")
    if not 0 <= frame_id < vid_len:
        raise ValueError(f"frame {frame_id} is outside a video of {vid_len} frames")
    if num_frames == 1:
        return [frame_id]
    before = int(rng.integers(1, max_skip + 1))
    after = int(rng.integers(1, max_skip + 1))
    indices = [frame_id, max(0, frame_id - before), min(vid_len - 1, frame_id + after)]
    if num_frames > 3:
        lo, hi = min(indices), max(indices)
        pool = list(range(lo)) + list(range(hi, vid_len))
        count = num_frames - len(indices)
        if len(pool) > count:
            indices += [pool[i] for i in rng.choice(len(pool), count, replace=False)]
        elif vid_len >= count:
            indices += [int(i) for i in rng.choice(vid_len, count, replace=False)]
        else:
            extra = count - vid_len
            indices += [int(i) for i in rng.choice(vid_len, extra, replace=extra > vid_len)]
            indices += list(range(vid_len))
    indices.sort()
    return indices[:num_frames]


def category_ids(meta_files: Sequence[Path]) -> dict[str, int]:
    """Category name -> label id: position in the sorted set of categories of the meta files.

    The official label tables are exactly this enumeration (alphabetical) of the datasets'
    categories. Labels only matter with ``num_classes > 1``; the released model is binary.
    """
    names: set[str] = set()
    for path in meta_files:
        for video, vid_meta in load_videos_dict(path).items():
            for obj in vid_meta.get("objects", {}).values():
                if "category" not in obj:
                    raise ValueError(f"{path}: an object of video {video} has no category")
                names.add(obj["category"])
    return {name: i for i, name in enumerate(sorted(names))}


class ResampledClips(Dataset):
    """A dataset whose item ``index`` of an epoch is drawn from ``(seed, epoch, index)`` alone, whichever
    worker or process reads it; where ``resamples`` holds, an item whose clip shows no valid object after
    the transforms is replaced by another random one, as the official training loaders do.

    Subclasses set ``samples``, ``seed`` and ``epoch`` and define ``_load(sample, rng)`` ->
    ``(video, target)``.
    """

    samples: Sequence[Any]
    seed: int
    epoch: int

    @property
    def resamples(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        return self.get_item(index, np.random.default_rng((self.seed, self.epoch, index)))

    def get_item(self, index: int, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        """Sample ``index`` with all random draws from ``rng`` (see the class docstring)."""
        for _ in range(MAX_RESAMPLES):
            video, target = self._load(self.samples[index], rng)
            if not self.resamples or bool((target["valid"] == 1).any()):
                return video, target
            index = int(rng.integers(len(self.samples)))
        raise RuntimeError(f"no clip with a visible object after {MAX_RESAMPLES} draws; check the annotations")

    def _load(self, sample: Any, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        raise NotImplementedError


@dataclass(frozen=True)
class ClipSample:
    """One training sample: an expression of a video and the clip's anchor frame."""

    video: str
    expression: str
    obj_id: int
    category: str
    frames: tuple[str, ...]
    frame_id: int


class RefVOSDataset(ResampledClips):
    """Training clips of a Ref-YouTube-VOS-layout split (Ref-YouTube-VOS, converted Ref-DAVIS17).

    Args:
        split_dir: folder with ``JPEGImages/``, ``Annotations/`` and ``meta.json``.
        expressions_file: the split's ``meta_expressions.json``.
        num_frames: frames per clip (official 6 for YTVOS).
        max_skip: largest offset of the two local neighbours (official 3).
        transforms: clip transform; defaults to the official training pipeline.
        seed: base seed of the per-item generators.
        videos: restrict to these video ids (e.g. the training part of a held-out split).
        categories: category name -> label id; defaults to :func:`category_ids` of ``meta.json``.

    ``dataset[i]`` returns ``(video, target)``: video float32 [T, 3, H, W] ImageNet-normalised;
    target ``labels`` int64 [T], ``boxes`` float32 [T, 4] normalised cxcywh, ``masks`` bool
    [T, H, W], ``valid`` int32 [T], ``caption`` str, ``orig_size`` / ``size`` int64 [2] (H, W),
    ``frames_idx`` int64 [T].
    """

    def __init__(
        self,
        split_dir: str | os.PathLike[str],
        expressions_file: str | os.PathLike[str],
        *,
        num_frames: int = 6,
        max_skip: int = 3,
        transforms: Transform | None = None,
        seed: int = 0,
        videos: Collection[str] | None = None,
        categories: dict[str, int] | None = None,
    ) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.split_dir = Path(split_dir)
        self.num_frames = num_frames
        self.max_skip = max_skip
        self.transforms = transforms if transforms is not None else make_train_transforms()
        self.seed = seed
        self.epoch = 0
        meta_file = self.split_dir / "meta.json"
        self.categories = categories if categories is not None else category_ids([meta_file])
        self.samples = self._build_samples(
            load_videos_dict(meta_file), load_videos_dict(Path(expressions_file)), videos, Path(expressions_file)
        )
        if not self.samples:
            raise ValueError(f"no training samples in {expressions_file} (videos filter: {videos is not None})")

    def _build_samples(
        self,
        objects_by_video: dict[str, Any],
        expressions_by_video: dict[str, Any],
        keep: Collection[str] | None,
        source: Path,
    ) -> list[ClipSample]:
        keep_set = set(keep) if keep is not None else None
        samples = []
        for video, vid_data in expressions_by_video.items():
            if keep_set is not None and video not in keep_set:
                continue
            safe_name(video, "video id", source)
            if video not in objects_by_video:
                raise ValueError(f"video {video} has expressions but no entry in {self.split_dir / 'meta.json'}")
            frames = tuple(sorted(frame_names(vid_data, video, source)))
            objects = objects_by_video[video]["objects"]
            for exp in vid_data["expressions"].values():
                obj_key = str(exp["obj_id"])
                if obj_key not in objects:
                    raise ValueError(f"video {video}: expression refers to unknown object {obj_key}")
                for frame_id in range(0, len(frames), self.num_frames):
                    samples.append(
                        ClipSample(video, exp["exp"], int(obj_key), objects[obj_key]["category"], frames, frame_id)
                    )
        return samples

    def _load(self, sample: ClipSample, rng: np.random.Generator) -> tuple[Tensor, dict[str, Any]]:
        indices = sample_train_indices(sample.frame_id, len(sample.frames), self.num_frames, self.max_skip, rng)
        images, masks = [], []
        for i in indices:
            name = sample.frames[i]
            image_path = self.split_dir / "JPEGImages" / sample.video / f"{name}.jpg"
            if not image_path.is_file():
                raise FileNotFoundError(f"frame not found: {image_path}")
            images.append(open_rgb(image_path))
            ids = read_id_map(self.split_dir / "Annotations" / sample.video / f"{name}.png")
            masks.append(torch.from_numpy(ids == sample.obj_id))
        width, height = images[0].size
        mask_stack = torch.stack(masks)
        if mask_stack.shape[1:] != (height, width):
            raise ValueError(f"video {sample.video}: annotation size {tuple(mask_stack.shape[1:])} != frame size")
        boxes, valid = boxes_from_masks(mask_stack)
        label = self.categories[sample.category]
        target = {
            "frames_idx": torch.tensor(indices, dtype=torch.int64),
            "labels": torch.full((len(indices),), label, dtype=torch.int64),
            "boxes": boxes,
            "masks": mask_stack,
            "valid": valid,
            "caption": clean_caption(sample.expression),
            "orig_size": torch.tensor([height, width]),
            "size": torch.tensor([height, width]),
        }
        return self.transforms(images, target, rng)


def ref_ytvos_train(root: str | os.PathLike[str], *, heldout_every: int | None = None, **kwargs: Any) -> RefVOSDataset:
    """The Ref-YouTube-VOS training set (``kwargs`` go to :class:`RefVOSDataset`).

    With ``heldout_every`` the videos of :func:`ytvos_heldout_split` are left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Ref-YouTube-VOS root not found: {root}")
    if heldout_every is not None:
        if "videos" in kwargs:
            raise ValueError("pass either heldout_every or videos, not both")
        kwargs["videos"] = ytvos_heldout_split(root, heldout_every)[0]
    return RefVOSDataset(root / "train", root / "meta_expressions" / "train" / "meta_expressions.json", **kwargs)


@dataclass(frozen=True)
class Expression:
    """One referring expression of an evaluation video.

    ``obj_id`` is the annotated object (``None`` where the split does not publish it).
    """

    exp_id: str
    text: str
    obj_id: int | None


@dataclass(frozen=True)
class EvalVideo:
    """A video to predict: its frames, expressions and (where public) ground-truth masks.

    ``mask_paths[t]`` is the annotation PNG of frame ``t`` (object ``obj_id`` of an expression is
    ``png == obj_id``), or the whole field is ``None`` where masks are not public.
    """

    video: str
    frame_names: tuple[str, ...]
    frame_paths: tuple[Path, ...]
    expressions: tuple[Expression, ...]
    mask_paths: tuple[Path, ...] | None

    def __post_init__(self) -> None:
        # The ids become output paths (<video>/<exp_id>/<frame>.png): each must be a plain name.
        safe_name(self.video, "video id")
        for expression in self.expressions:
            safe_name(expression.exp_id, f"expression id of video {self.video}")
        for name in self.frame_names:
            safe_name(name, f"frame name of video {self.video}")


def frame_names(vid_data: Any, video: str, source: str | os.PathLike[str]) -> list[str]:
    """The ``frames`` list of a ``meta_expressions.json`` video entry, every name checked by :func:`safe_name`."""
    frames = vid_data.get("frames") if isinstance(vid_data, dict) else None
    if not isinstance(frames, list):
        raise ValueError(f'{source}: video {video} needs a "frames" list')
    return [safe_name(name, f"frame name of video {video}", source) for name in frames]


def make_eval_video(
    video: str,
    vid_data: dict[str, Any],
    images_dir: Path,
    annotations_dir: Path | None,
    sort_frames: bool,
    source: str | os.PathLike[str] = "meta_expressions.json",
) -> EvalVideo:
    """An :class:`EvalVideo` from a ``meta_expressions.json`` entry (``{"expressions", "frames"}``).

    The video id, expression ids and frame names become output paths, so each must be a plain name.

    Raises:
        UnsafeNameError: an id or name that is not a plain name (naming it and ``source``).
        ValueError: an entry without ``frames`` or ``expressions``.
    """
    names = frame_names(vid_data, video, source)
    names = tuple(sorted(names) if sort_frames else names)
    entries = vid_data.get("expressions")
    if not isinstance(entries, dict):
        raise ValueError(f'{source}: video {video} needs an "expressions" mapping')
    try:
        expressions = tuple(
            Expression(str(exp_id), exp["exp"], int(exp["obj_id"]) if "obj_id" in exp else None)
            for exp_id, exp in entries.items()
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: video {video} has a malformed expression ({exc!r})") from None
    for expression in expressions:
        # Checked here, not hours into a prediction when the text encoder meets it.
        if not isinstance(expression.text, str):
            raise ValueError(f"{source}: expression {expression.exp_id} of video {video} is not a string")
        check_utf8(expression.text, f"{source}: expression {expression.exp_id} of video {video}")
    try:
        return EvalVideo(
            video=video,
            frame_names=names,
            frame_paths=tuple(images_dir / video / f"{n}.jpg" for n in names),
            expressions=expressions,
            mask_paths=None if annotations_dir is None else tuple(annotations_dir / video / f"{n}.png" for n in names),
        )
    except UnsafeNameError as exc:
        raise UnsafeNameError(f"{source}: {exc}") from None


def ytvos_valid_videos(root: str | os.PathLike[str]) -> list[EvalVideo]:
    """The competition "valid" split to predict: valid-set videos not in the test set, sorted.

    The valid ``meta_expressions.json`` lists both the validation (202) and the test (305)
    videos; the test file is used to remove the latter, as the official inference script does.
    Frames keep the order of the expressions file (the official script does not sort them).
    """
    root = Path(root)
    source = root / "meta_expressions" / "valid" / "meta_expressions.json"
    valid = load_videos_dict(source)
    test = load_videos_dict(root / "meta_expressions" / "test" / "meta_expressions.json")
    images_dir = root / "valid" / "JPEGImages"
    return [
        make_eval_video(v, valid[v], images_dir, None, sort_frames=False, source=source)
        for v in sorted(set(valid) - set(test))
    ]


def ytvos_heldout_split(root: str | os.PathLike[str], every: int = 20) -> tuple[list[str], list[str]]:
    """Deterministic split of the training videos into (train, held-out).

    Rule: sort the video ids of ``meta_expressions/train``; the video at sorted position ``k`` is
    held out iff ``k % every == 0``. Both lists are sorted.
    """
    if every < 2:
        raise ValueError(f"every must be >= 2, got {every}")
    videos = sorted(load_videos_dict(Path(root) / "meta_expressions" / "train" / "meta_expressions.json"))
    heldout = videos[::every]
    held = set(heldout)
    return [v for v in videos if v not in held], heldout


def ytvos_heldout_videos(root: str | os.PathLike[str], every: int = 20) -> list[EvalVideo]:
    """The held-out training videos with their expressions and ground-truth mask paths.

    Frames are the sorted frame names of the expressions file, as the training loader uses.
    """
    root = Path(root)
    source = root / "meta_expressions" / "train" / "meta_expressions.json"
    expressions = load_videos_dict(source)
    images_dir, annotations_dir = root / "train" / "JPEGImages", root / "train" / "Annotations"
    return [
        make_eval_video(v, expressions[v], images_dir, annotations_dir, sort_frames=True, source=source)
        for v in ytvos_heldout_split(root, every)[1]
    ]
