"""Clip-level training and evaluation transforms, as the official Ref-VOS loaders apply them.

Every transform acts on a whole clip at once (the same flip, resize and crop for all frames) and
on a target dict that holds, at least:

- ``boxes``: float32 [N, 4], absolute ``x1, y1, x2, y2`` pixels (inclusive mask bounds), where N
  is the number of annotated frames (T for Ref-YTVOS/DAVIS, 1 for A2D/JHMDB);
- ``masks``: bool [N, H, W];
- ``size``: int64 [2], the current (H, W);
- ``caption``: the referring expression.

Frames travel as ``PIL.Image`` (RGB) until :class:`ToTensorNormalize`, which returns the video as
float32 [T, 3, H, W] (ImageNet-normalised) and turns boxes into normalised ``cx, cy, w, h``.

Randomness comes only from the ``numpy.random.Generator`` passed to each call, so a clip is
reproducible from its generator's seed.

Official pipeline (training, all four datasets)::

    flip(p=0.5, swaps "left"/"right") -> photometric distortion (per frame) ->
    either [resize short side to one of 288..512 (max 640) -> check]
    or     [resize short side to 400/500/600 -> random crop 384..600 ->
            resize short side to one of 288..512 (max 640) -> check]   (p=0.5 each)
    -> to tensor + ImageNet normalisation

Evaluation: resize the short side to 360 (max 640 for A2D/JHMDB; the Ref-YTVOS/DAVIS inference
scripts use no maximum), then to tensor + normalisation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bifit.data.frame_sizes import EVAL_SHORT_SIZE, resized_hw
from bifit.data.targets import check_boxes, normalize_boxes
from bifit.data.normalization import normalize_frames

#: Shorter-side sizes of the final multi-scale resize during training.
TRAIN_SCALES: tuple[int, ...] = (288, 320, 352, 392, 416, 448, 480, 512)
#: Shorter-side sizes of the resize that precedes the random crop.
CROP_PRE_SCALES: tuple[int, ...] = (400, 500, 600)
#: Bounds of the random crop's height and width.
CROP_MIN_SIZE = 384
CROP_MAX_SIZE = 600

Clip = list[Image.Image]
Target = dict[str, Any]
#: A transform maps (frames, target, rng) to (frames, target); the final step returns a tensor.
Transform = Callable[[Clip, Target, np.random.Generator], tuple[Any, Target]]

_LEFT_RIGHT = re.compile("left|right")


def swap_left_right(caption: str) -> str:
    """Swap every ``left`` and ``right`` substring, as the official flip does.

    The swap is by substring, not by word, exactly as the official code: ``"bright"`` becomes
    ``"bleft"`` and ``"leftmost"`` becomes ``"rightmost"``.
    """
    return _LEFT_RIGHT.sub(lambda m: "right" if m.group(0) == "left" else "left", caption)


def resize(clip: Clip, target: Target, size: int, max_size: int | None = None) -> tuple[Clip, Target]:
    """Resize every frame (PIL bilinear), scale boxes, resize masks with nearest neighbour."""
    width, height = clip[0].size
    out_h, out_w = resized_hw(height, width, size, max_size)
    frames = [im.resize((out_w, out_h), Image.Resampling.BILINEAR) for im in clip]
    target = dict(target)
    ratio_w, ratio_h = out_w / width, out_h / height
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    if "masks" in target:
        masks = target["masks"]
        if masks.shape[0] > 0:
            target["masks"] = F.interpolate(masks[:, None].float(), (out_h, out_w), mode="nearest")[:, 0] > 0.5
        else:
            target["masks"] = torch.zeros((0, out_h, out_w), dtype=torch.bool)
    target["size"] = torch.tensor([out_h, out_w])
    return frames, target


def crop(clip: Clip, target: Target, top: int, left: int, height: int, width: int) -> tuple[Clip, Target]:
    """Crop a region from every frame; boxes are shifted and clipped to the region."""
    frames = [im.crop((left, top, left + width, top + height)) for im in clip]
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
        boxes = torch.min(boxes.reshape(-1, 2, 2), torch.tensor([width, height], dtype=torch.float32))
        target["boxes"] = boxes.clamp(min=0).reshape(-1, 4)
    if "masks" in target:
        target["masks"] = target["masks"][:, top : top + height, left : left + width]
    target["size"] = torch.tensor([height, width])
    return frames, target


def hflip(clip: Clip, target: Target) -> tuple[Clip, Target]:
    """Mirror every frame, its boxes and masks, and swap left/right in the caption.

    Boxes map x to ``W - x`` (not ``W - 1 - x``) as in the official code.
    """
    frames = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in clip]
    width = clip[0].size[0]
    target = dict(target)
    if "boxes" in target:
        boxes = target["boxes"]
        target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "caption" in target:
        target["caption"] = swap_left_right(target["caption"])
    return frames, target


def check_valid(target: Target) -> Target:
    """Recompute ``valid`` from the boxes: 1 iff x2 > x1 and y2 > y1; invalid boxes become 0.

    Masks are left untouched, so an object one pixel wide is invalid but keeps its mask.
    """
    target = dict(target)
    target["boxes"], target["valid"] = check_boxes(target["boxes"])
    return target


# --- photometric distortion -------------------------------------------------------------------
# The official distortion converts with OpenCV's float32 "BGR"<->HSV (H in degrees, S = (V - min) / |V|,
# no clipping, which matters because values can leave [0, 255] between steps) on frames that are
# really RGB, so channel 2 plays the part of red. The same OpenCV calls are made here.


def _bgr_to_hsv(img: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] "BGR" -> float32 [H, W, 3] HSV, as `cv2.cvtColor(img, cv2.COLOR_BGR2HSV)`."""
    return cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_BGR2HSV)


def _hsv_to_bgr(img: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] HSV -> float32 [H, W, 3] "BGR", as `cv2.cvtColor(img, cv2.COLOR_HSV2BGR)`."""
    return cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_HSV2BGR)


_CHANNEL_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def photometric_distort(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Official SSD-style photometric distortion of one frame.

    Steps (each applied with probability 0.5): brightness += U(-32, 32); then either
    [contrast ×U(0.5, 1.5), saturation ×U(0.5, 1.5), hue += U(-18°, 18°)] or the same with the
    contrast step last; then a random channel permutation. Values are clipped to [0, 255] before
    the uint8 conversion; the official code casts without clipping, whose wrap-around is
    platform-dependent.
    """
    img = np.asarray(image, dtype=np.float32).copy()
    if rng.integers(2):
        img += np.float32(rng.uniform(-32.0, 32.0))

    def contrast(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            x = x * np.float32(rng.uniform(0.5, 1.5))
        return x

    contrast_first = bool(rng.integers(2))
    if contrast_first:
        img = contrast(img)
    hsv = _bgr_to_hsv(img)
    if rng.integers(2):
        hsv[..., 1] *= np.float32(rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hue = hsv[..., 0] + np.float32(rng.uniform(-18.0, 18.0))
        hue = np.where(hue > 360.0, hue - 360.0, hue)
        hsv[..., 0] = np.where(hue < 0.0, hue + 360.0, hue)
    img = _hsv_to_bgr(hsv)
    if not contrast_first:
        img = contrast(img)
    if rng.integers(2):
        img = img[..., list(_CHANNEL_PERMUTATIONS[rng.integers(len(_CHANNEL_PERMUTATIONS))])]
    return Image.fromarray(np.clip(img, 0.0, 255.0).astype(np.uint8))


# --- composable transforms --------------------------------------------------------------------


class Compose:
    """Apply transforms in order, threading one generator through them."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, clip: Clip, target: Target, rng: np.random.Generator) -> tuple[Any, Target]:
        for t in self.transforms:
            clip, target = t(clip, target, rng)
        return clip, target


class RandomHorizontalFlip:
    """With probability ``p``, :func:`hflip` the clip (caption left/right swapped)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, clip: Clip, target: Target, rng: np.random.Generator) -> tuple[Clip, Target]:
        if rng.random() < self.p:
            return hflip(clip, target)
        return clip, target


class PhotometricDistort:
    """:func:`photometric_distort` on every frame, with independent draws per frame (as official)."""

    def __call__(self, clip: Clip, target: Target, rng: np.random.Generator) -> tuple[Clip, Target]:
        return [photometric_distort(im, rng) for im in clip], target


class RandomResize:
    """Resize the shorter side to a size drawn uniformly from ``sizes`` (longer side ≤ ``max_size``)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None) -> None:
        if not sizes:
            raise ValueError("RandomResize needs at least one size")
        self.sizes = tuple(sizes)
        self.max_size = max_size

    def __call__(self, clip: Clip, target: Target, rng: np.random.Generator) -> tuple[Clip, Target]:
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        return resize(clip, target, size, self.max_size)


class RandomSizeCrop:
    """Crop a random region of height and width in [min_size, min(image side, max_size)]."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, clip: Clip, target: Target, rng: np.random.Generator) -> tuple[Clip, Target]:
        img_w, img_h = clip[0].size
        if min(img_w, img_h) < self.min_size:
            raise ValueError(f"cannot crop at least {self.min_size}px from a {img_w}x{img_h} frame")
        crop_w = int(rng.integers(self.min_size, min(img_w, self.max_size) + 1))
        crop_h = int(rng.integers(self.min_size, min(img_h, self.max_size) + 1))
        top = int(rng.integers(0, img_h - crop_h + 1))
        left = int(rng.integers(0, img_w - crop_w + 1))
        return crop(clip, target, top, left, crop_h, crop_w)


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5) -> None:
        self.first, self.second, self.p = first, second, p

    def __call__(self, clip: Clip, target: Target, rng: np.random.Generator) -> tuple[Any, Target]:
        if rng.random() < self.p:
            return self.first(clip, target, rng)
        return self.second(clip, target, rng)


class CheckValid:
    """:func:`check_valid` as a transform step."""

    def __call__(self, clip: Clip, target: Target, rng: np.random.Generator) -> tuple[Clip, Target]:
        return clip, check_valid(target)


class ToTensorNormalize:
    """Frames -> float32 [T, 3, H, W] ImageNet-normalised; boxes -> normalised cx, cy, w, h."""

    def __call__(self, clip: Clip, target: Target, rng: np.random.Generator) -> tuple[torch.Tensor, Target]:
        video = frames_to_tensor(clip)
        target = dict(target)
        if "boxes" in target:
            target["boxes"] = normalize_boxes(target["boxes"], video.shape[-2:])
        return video, target


def frames_to_tensor(clip: Sequence[Image.Image]) -> torch.Tensor:
    """RGB PIL frames -> float32 [T, 3, H, W], scaled to [0, 1] and ImageNet-normalised."""
    if not clip:
        raise ValueError("cannot convert an empty clip")
    return normalize_frames(torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in clip])))


def make_train_transforms(max_size: int = 640) -> Compose:
    """The official training pipeline (see the module docstring)."""
    return Compose(
        [
            RandomHorizontalFlip(),
            PhotometricDistort(),
            RandomSelect(
                Compose([RandomResize(TRAIN_SCALES, max_size=max_size), CheckValid()]),
                Compose(
                    [
                        RandomResize(CROP_PRE_SCALES),
                        RandomSizeCrop(CROP_MIN_SIZE, CROP_MAX_SIZE),
                        RandomResize(TRAIN_SCALES, max_size=max_size),
                        CheckValid(),
                    ]
                ),
            ),
            ToTensorNormalize(),
        ]
    )


def make_eval_transforms(short_size: int = EVAL_SHORT_SIZE, max_size: int | None = 640) -> Compose:
    """Official evaluation pipeline: shorter side to ``short_size`` (longer ≤ ``max_size``), normalise.

    A2D/JHMDB evaluation uses ``max_size=640``; the Ref-YTVOS/DAVIS inference scripts use
    ``torchvision.transforms.Resize(360)``, i.e. ``max_size=None``.
    """
    return Compose([RandomResize([short_size], max_size=max_size), ToTensorNormalize()])
