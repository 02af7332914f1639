"""Procedurally generated referring-video clips: moving coloured shapes and expressions about them.

Each clip shows 2-4 shapes (by default) moving in straight lines over a textured, noisy background.
Shapes overlap in a random depth order, so nearer ones occlude farther ones, and some leave the
frame during the clip, so their masks are empty in the last frames. Objects often share colour,
shape or size with another object, so an expression may need colour, shape, size, position and
motion together to pick one out: "the small red circle standing still", "the square at the top".

Every expression attached to an object is checked to describe that object and no other in its
clip. Expressions say whether an object moves, never in which direction: BIFIT cannot see the
order of frames (its outputs for permuted frames are the permuted outputs), so "moving left" and
"moving right" would be the same clip to it, a question without an answer. Ground truth is exact: a mask holds the pixels where the object is visible (not hidden by a
nearer object, inside the frame).

:func:`generate_clip` returns a raw clip (uint8 frames, objects with masks, boxes and
expressions) for demos; :class:`SyntheticRVOS` wraps it as a dataset with the same item format as
the real benchmarks. Both are deterministic: the clip depends only on the seed (and, in the
dataset, the item index), never on the order or the process that reads it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bifit.data.targets import boxes_from_masks, build_target
from bifit.data.normalization import IMAGENET_MEAN, IMAGENET_STD, normalize_frames

__all__ = [
    "ATTRIBUTE_TYPES",
    "COLOURS",
    "SHAPES",
    "ObjectAttributes",
    "SceneConfig",
    "SyntheticClip",
    "SyntheticObject",
    "SyntheticRVOS",
    "denormalize_video",
    "describe",
    "generate_clip",
    "matches",
    "pick_expression",
]

COLOURS: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (225, 45, 40),
        "green": (40, 185, 70),
        "blue": (45, 95, 235),
        "yellow": (240, 215, 35),
        "purple": (155, 55, 205),
        "white": (245, 245, 245),
    }
)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "big")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# What an expression may say of an object's motion.
MOTIONS: tuple[str, ...] = ("moving", "still")
# What an expression may refer to; "position" covers the vertical and the horizontal extreme.
ATTRIBUTE_TYPES: tuple[str, ...] = ("colour", "shape", "size", "position", "motion")

# Radius ranges (fraction of the shorter frame side) of a shape with the area of a circle of that
# radius; the gap between them keeps "small" and "big" unambiguous.
_RADIUS_RANGE = MappingProxyType({"small": (0.11, 0.13), "big": (0.19, 0.23)})
# An object counts as recognisable in a frame when this fraction of its shape is visible.
_VISIBLE_FRACTION = 0.35
# "At the top" etc. needs this margin (fraction of the frame side) over every other object.
_POSITION_MARGIN = 0.1
_MAX_ATTEMPTS = 200
_MAX_OBJECTS = 12

_MOTION_PHRASE = MappingProxyType({"moving": "moving", "still": "standing still"})

Descriptor = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SceneConfig:
    """How clips are generated.

    Attributes:
        num_frames: frames per clip (T).
        size: ``(H, W)`` of the frames.
        min_objects, max_objects: number of shapes per clip (inclusive range).
        colours: colour names to draw from (keys of :data:`COLOURS`).
        shapes: shape names to draw from (:data:`SHAPES`).
        attributes: what expressions may mention (subset of :data:`ATTRIBUTE_TYPES`); motion is
            never used for single-frame clips.
        max_attributes: at most this many attributes per expression.
        share_prob: chance that a new object copies some of colour, shape and size from an
            earlier one (a distractor).
        leave_prob: chance that a moving object leaves the frame during the clip.
        occlude_prob: chance that an object is placed to cross another one mid-clip.
        still_prob: chance that an object does not move.
        twin_prob: chance that a later object is the twin of an earlier one: the same colour, shape
            and size, the opposite motion (still where the other moves, moving where it stands), and
            placed to cross it. Only motion tells the two apart, the hardest case of this world; the
            default 0 leaves such twins to chance (``share_prob``), and training may ask for more.
        noise_std: standard deviation of the (uniform) per-pixel noise, in uint8 levels.
    """

    num_frames: int = 6
    size: tuple[int, int] = (96, 128)
    min_objects: int = 2
    max_objects: int = 3
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    attributes: tuple[str, ...] = ATTRIBUTE_TYPES
    max_attributes: int = 4
    share_prob: float = 0.7
    leave_prob: float = 0.25
    occlude_prob: float = 0.3
    still_prob: float = 0.2
    twin_prob: float = 0.0
    noise_std: float = 5.0

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if len(self.size) != 2 or min(self.size) < 32:
            raise ValueError(f"size must be (H, W) with both sides >= 32, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects <= _MAX_OBJECTS:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {_MAX_OBJECTS}, got {self.min_objects} and {self.max_objects}"
            )
        unknown = [c for c in self.colours if c not in COLOURS]
        if not self.colours or unknown:
            raise ValueError(f"colours must be a non-empty subset of {sorted(COLOURS)}, got {self.colours}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if not self.shapes or unknown:
            raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {self.shapes}")
        unknown = [a for a in self.attributes if a not in ATTRIBUTE_TYPES]
        if not self.attributes or unknown:
            raise ValueError(f"attributes must be a non-empty subset of {ATTRIBUTE_TYPES}, got {self.attributes}")
        if self.max_attributes < 1:
            raise ValueError(f"max_attributes must be >= 1, got {self.max_attributes}")
        for name in ("share_prob", "leave_prob", "occlude_prob", "still_prob", "twin_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")


@dataclass(frozen=True)
class ObjectAttributes:
    """What can be said about one object of a clip.

    ``vertical`` is "top"/"bottom" and ``horizontal`` "left"/"right" when the object is the extreme
    one of its clip on that axis (by a margin, in every frame it shares with each other object),
    otherwise None. ``direction`` is the direction of its straight-line motion (one of
    :data:`DIRECTIONS`) or "still"; expressions state only ``motion``, "moving" or "still".
    """

    colour: str
    shape: str
    size: str
    direction: str
    vertical: str | None
    horizontal: str | None

    @property
    def motion(self) -> str:
        """What an expression may say of the motion: "moving" or "still"."""
        return "still" if self.direction == "still" else "moving"


@dataclass(frozen=True, eq=False)
class SyntheticObject:
    """One object of a clip.

    Attributes:
        attributes: its colour, shape, size, motion and extreme positions.
        masks: bool [T, H, W], its visible pixels per frame.
        boxes: float32 [T, 4], official training boxes ``xyxy`` in pixels (0 where invalid).
        valid: int32 [T], official validity of each frame's box.
        visible_fraction: float32 [T], visible share of the whole shape (below 1 when it is
            occluded or partly out of the frame, 0 when hidden or gone).
        expressions: referring expressions that describe this object and no other in the clip,
            shortest first.
        descriptors: for each expression, the ``(attribute, value)`` pairs it states.
        depth: drawing order, 0 = farthest (drawn first).
    """

    attributes: ObjectAttributes
    masks: np.ndarray
    boxes: np.ndarray
    valid: np.ndarray
    visible_fraction: np.ndarray
    expressions: tuple[str, ...]
    descriptors: tuple[Descriptor, ...]
    depth: int


@dataclass(frozen=True, eq=False)
class SyntheticClip:
    """A generated clip: uint8 RGB ``frames`` [T, H, W, 3] and its ``objects``."""

    frames: np.ndarray
    objects: tuple[SyntheticObject, ...]


@dataclass
class _Plan:
    colour: str
    shape: str
    size: str
    radius: float
    direction: str
    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [T, 2] (x, y), set by _plan_motion


def matches(attributes: ObjectAttributes, descriptor: Descriptor) -> bool:
    """Whether an object has every ``(attribute, value)`` pair of a descriptor."""
    return all(getattr(attributes, name) == value for name, value in descriptor)


def describe(descriptor: Descriptor) -> str:
    """The English expression for a descriptor, e.g. "the small red circle standing still"."""
    stated = dict(descriptor)
    words = ["the"]
    if "size" in stated:
        words.append(stated["size"])
    if "colour" in stated:
        words.append(stated["colour"])
    words.append(stated.get("shape", "shape"))
    vertical, horizontal = stated.get("vertical"), stated.get("horizontal")
    if vertical and horizontal:
        words.append(f"at the {vertical} {horizontal}")
    elif vertical:
        words.append(f"at the {vertical}")
    elif horizontal:
        words.append(f"on the {horizontal}")
    if "motion" in stated:
        words.append(_MOTION_PHRASE[stated["motion"]])
    return " ".join(words)


def _half_extent(shape: str, radius: float) -> tuple[float, float]:
    """Half width and half height of the box around a shape centred on its centroid."""
    if shape == "square":
        side = 0.5 * math.sqrt(math.pi) * radius
        return side, side
    if shape == "diamond":
        reach = math.sqrt(math.pi / 2) * radius
        return reach, reach
    if shape == "triangle":
        base = math.sqrt(4 * math.pi / math.sqrt(3)) * radius
        return base / 2, base / math.sqrt(3)  # the apex lies 2/3 of the height above the centroid
    return radius, radius


def _rasterize(
    shape: str, radius: float, cx: float, cy: float, height: int, width: int
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, int]:
    """Pixels of a shape (all equal-area to a circle of ``radius``) centred at ``(cx, cy)``.

    Returns:
        ``(window, inside, core, full_area)``: the (rows, columns) slices of the frame around the
        shape; bool [rows, columns] of its pixels there (empty when it is out of the frame) and of
        those not on its 1-pixel outline; the pixel count the whole shape would cover on an
        unbounded canvas.
    """
    ex, ey = _half_extent(shape, radius)
    x0, x1 = math.floor(cx - ex), math.ceil(cx + ex)
    y0, y1 = math.floor(cy - ey), math.ceil(cy + ey)
    # Evaluated one pixel beyond the shape's box on each side, so that the outline test below
    # sees every neighbour.
    dx = np.arange(x0 - 1, x1 + 2, dtype=np.float32)[None, :] - np.float32(cx)
    dy = np.arange(y0 - 1, y1 + 2, dtype=np.float32)[:, None] - np.float32(cy)
    if shape == "circle":
        grown = dx * dx + dy * dy <= radius * radius
    elif shape == "square":
        grown = (np.abs(dx) <= ex) & (np.abs(dy) <= ey)
    elif shape == "diamond":
        grown = np.abs(dx) + np.abs(dy) <= ex
    else:  # triangle pointing up, centroid at the centre
        height_t = ex * math.sqrt(3)
        grown = (dy <= height_t / 3) & (np.abs(dx) <= (dy + 2 * height_t / 3) / math.sqrt(3))
    inside = grown[1:-1, 1:-1]
    # The outline lets same-coloured shapes that overlap be told apart.
    core = inside & grown[:-2, 1:-1] & grown[2:, 1:-1] & grown[1:-1, :-2] & grown[1:-1, 2:]
    top, bottom = min(max(y0, 0), height), min(max(y1 + 1, 0), height)
    left, right = min(max(x0, 0), width), min(max(x1 + 1, 0), width)
    rows = slice(top - y0, top - y0 + bottom - top)
    cols = slice(left - x0, left - x0 + right - left)
    window = (slice(top, bottom), slice(left, right))
    return window, inside[rows, cols], core[rows, cols], int(np.count_nonzero(inside))


def _sample_kinds(rng: np.random.Generator, count: int, config: SceneConfig) -> list[tuple[str, str, str]]:
    """Colour, shape and size per object; later objects often copy some from an earlier one."""
    kinds: list[tuple[str, str, str]] = []
    for _ in range(count):
        kind = [
            config.colours[rng.integers(len(config.colours))],
            config.shapes[rng.integers(len(config.shapes))],
            SIZES[rng.integers(len(SIZES))],
        ]
        if kinds and rng.random() < config.share_prob:
            source = kinds[rng.integers(len(kinds))]
            num_copied = rng.choice([1, 2, 3], p=[0.5, 0.4, 0.1])
            for slot in rng.choice(3, size=num_copied, replace=False):
                kind[slot] = source[slot]
        kinds.append((kind[0], kind[1], kind[2]))
    return kinds


def _axis_path(rng: np.random.Generator, length: int, extent: float, num_frames: int, leave: bool) -> np.ndarray | None:
    """Positions [T] along one axis for an object moving towards larger coordinates.

    Without ``leave`` the object stays inside the frame and travels 20-40% of the axis; with it,
    it starts inside and is entirely out of the frame from an exit frame in the second half of the
    clip. Returns None when the object is too big to do so.
    """
    steps = np.arange(num_frames, dtype=np.float64)
    last = num_frames - 1
    if leave:
        exit_frame = int(rng.integers(math.ceil(num_frames / 2), num_frames))
        exit_pos = length + extent  # the whole shape lies past the last pixel
        low = max(extent, exit_pos - 0.3 * length * exit_frame)
        high = length - 1 - extent
        if low > high:
            return None
        start = rng.uniform(low, high)
        speed = (exit_pos - start) / exit_frame
        return start + speed * steps
    room = length - 1 - 2 * extent
    travel = min(rng.uniform(0.2, 0.4) * length, room)
    if travel <= 0:
        return None
    # When the travel uses all the room, rounding can put the upper bound a hair below the lower one.
    start = rng.uniform(extent, max(extent, length - 1 - extent - travel))
    return start + travel / last * steps


def _plan_motion(rng: np.random.Generator, plan: _Plan, config: SceneConfig) -> None:
    """Fill ``plan.centres`` with a straight-line trajectory matching ``plan.direction``."""
    height, width = config.size
    ex, ey = _half_extent(plan.shape, plan.radius)
    num_frames = config.num_frames
    if plan.direction == "still":
        centre = (rng.uniform(ex, width - 1 - ex), rng.uniform(ey, height - 1 - ey))
        plan.centres = np.tile(np.array(centre, dtype=np.float64), (num_frames, 1))
        return
    horizontal = plan.direction in ("left", "right")
    along_len, along_ext = (width, ex) if horizontal else (height, ey)
    across_len, across_ext = (height, ey) if horizontal else (width, ex)
    leave = num_frames >= 2 and rng.random() < config.leave_prob
    along = _axis_path(rng, along_len, along_ext, num_frames, leave)
    if along is None:
        along = _axis_path(rng, along_len, along_ext, num_frames, False)
    if along is None:
        raise ValueError(f"frames of size {config.size} are too small for the shapes to move in")
    if plan.direction in ("left", "up"):
        along = along_len - 1 - along
    # A slight drift across the main direction keeps the motion from looking axis-locked.
    drift = rng.uniform(-0.06, 0.06) * across_len
    start = rng.uniform(across_ext - min(drift, 0.0), across_len - 1 - across_ext - max(drift, 0.0))
    across = start + drift * np.linspace(0.0, 1.0, num_frames)
    plan.centres = np.stack([along, across] if horizontal else [across, along], axis=1)


def _place_to_occlude(rng: np.random.Generator, plan: _Plan, other: _Plan, num_frames: int) -> None:
    """Shift a trajectory so that the object overlaps ``other`` in one frame."""
    frame = int(rng.integers(num_frames))
    angle = rng.uniform(0.0, 2 * math.pi)
    distance = rng.uniform(0.5, 1.0) * (plan.radius + other.radius)
    target = other.centres[frame] + distance * np.array([math.cos(angle), math.sin(angle)])
    plan.centres = plan.centres + (target - plan.centres[frame])


def _extremes(masks: np.ndarray, axis_len: int, axis: int) -> list[tuple[bool, bool]]:
    """For each object, whether it is the (low, high) extreme on an axis in every shared frame.

    Args:
        masks: bool [N, T, H, W] visible masks.
        axis_len: frame side along the axis.
        axis: 2 for vertical (rows), 3 for horizontal (columns).
    """
    counts = np.count_nonzero(masks, axis=(2, 3)).astype(np.float64)  # [N, T]
    profile = np.count_nonzero(masks, axis=5 - axis)  # [N, T, axis_len]: sum over the other spatial axis
    coords = np.arange(axis_len, dtype=np.float64)
    centroid = (profile @ coords) / np.maximum(counts, 1.0)  # [N, T]
    present = counts > 0
    margin = _POSITION_MARGIN * axis_len
    result = []
    num_objects = masks.shape[0]
    for a in range(num_objects):
        low = high = num_objects > 1
        for b in range(num_objects):
            if a == b:
                continue
            shared = present[a] & present[b]
            if not shared.any():
                low = high = False
                break
            low &= bool(np.all(centroid[a, shared] + margin <= centroid[b, shared]))
            high &= bool(np.all(centroid[a, shared] >= centroid[b, shared] + margin))
        result.append((low, high))
    return result


def _unique_descriptors(index: int, attributes: Sequence[ObjectAttributes], config: SceneConfig) -> list[Descriptor]:
    """Every descriptor (up to ``max_attributes`` pairs) matching object ``index`` only."""
    own = attributes[index]
    pairs: list[tuple[str, str]] = []
    if "colour" in config.attributes:
        pairs.append(("colour", own.colour))
    if "shape" in config.attributes:
        pairs.append(("shape", own.shape))
    if "size" in config.attributes:
        pairs.append(("size", own.size))
    if "position" in config.attributes:
        if own.vertical is not None:
            pairs.append(("vertical", own.vertical))
        if own.horizontal is not None:
            pairs.append(("horizontal", own.horizontal))
    if "motion" in config.attributes and config.num_frames > 1:
        pairs.append(("motion", own.motion))
    found = []
    for count in range(1, min(config.max_attributes, len(pairs)) + 1):
        for descriptor in itertools.combinations(pairs, count):
            if sum(matches(other, descriptor) for other in attributes) == 1:
                found.append(descriptor)
    return found


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [H, W, 3]: a grey of random tint with smooth blotches."""
    base = rng.uniform(55.0, 105.0) + rng.uniform(-12.0, 12.0, size=3)
    grid_h, grid_w = max(2, height // 16 + 1), max(2, width // 16 + 1)
    grid = rng.normal(0.0, 14.0, size=(grid_h, grid_w)).astype(np.float32)
    # Bilinear upsampling of the coarse grid.
    ys = np.linspace(0.0, grid_h - 1, height, dtype=np.float32)
    xs = np.linspace(0.0, grid_w - 1, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), grid_h - 2)
    x0 = np.minimum(xs.astype(np.int64), grid_w - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    texture = top * (1 - fy) + bottom * fy
    return (texture[:, :, None] + base[None, None, :]).astype(np.float32)


def _try_generate(rng: np.random.Generator, config: SceneConfig) -> SyntheticClip | None:
    """One attempt at a clip; None when an object is too hidden or cannot be described uniquely."""
    height, width = config.size
    num_frames = config.num_frames
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    short_side = min(height, width)
    plans: list[_Plan] = []
    for colour, shape, size in _sample_kinds(rng, count, config):
        # Drawn only when asked for, so that clips of twin_prob=0 stay those of earlier versions.
        twin_of = None
        if config.twin_prob > 0 and num_frames > 1 and plans and rng.random() < config.twin_prob:
            twin_of = plans[rng.integers(len(plans))]
            colour, shape, size = twin_of.colour, twin_of.shape, twin_of.size
        low, high = _RADIUS_RANGE[size]
        direction = "still"
        if twin_of is not None:
            if twin_of.direction == "still":
                direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
        elif num_frames > 1 and rng.random() >= config.still_prob:
            direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
        plan = _Plan(colour, shape, size, rng.uniform(low, high) * short_side, direction)
        _plan_motion(rng, plan, config)
        if twin_of is not None:
            _place_to_occlude(rng, plan, twin_of, num_frames)
        elif plans and rng.random() < config.occlude_prob:
            _place_to_occlude(rng, plan, plans[rng.integers(len(plans))], num_frames)
        plans.append(plan)

    order = rng.permutation(count)  # order[k] = object drawn k-th (farthest first)
    background = _background(rng, height, width)
    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    frames[:] = background
    labels = np.full((num_frames, height, width), -1, dtype=np.int8)
    full_areas = np.zeros((count, num_frames), dtype=np.int64)
    colours = [np.array(COLOURS[p.colour], dtype=np.float32) + rng.uniform(-15, 15, size=3) for p in plans]
    for t in range(num_frames):
        for index in order:
            plan = plans[index]
            window, inside, core, full_areas[index, t] = _rasterize(
                plan.shape, plan.radius, *plan.centres[t], height, width
            )
            patch = frames[t][window]
            patch[inside] = colours[index] * np.float32(0.55)
            patch[core] = colours[index]
            labels[t][window][inside] = index
    masks = labels[None] == np.arange(count, dtype=np.int8)[:, None, None, None]  # [N, T, H, W]

    visible_fraction = (np.count_nonzero(masks, axis=(2, 3)) / full_areas).astype(np.float32)  # [N, T]
    if np.any((visible_fraction >= _VISIBLE_FRACTION).sum(axis=1) < max(1, num_frames // 2)):
        return None
    vertical = _extremes(masks, height, 2)
    horizontal = _extremes(masks, width, 3)
    attributes = [
        ObjectAttributes(
            colour=p.colour,
            shape=p.shape,
            size=p.size,
            direction=p.direction,
            vertical="top" if vertical[i][0] else "bottom" if vertical[i][1] else None,
            horizontal="left" if horizontal[i][0] else "right" if horizontal[i][1] else None,
        )
        for i, p in enumerate(plans)
    ]
    objects = []
    depth = np.argsort(order)
    for index in range(count):
        descriptors = _unique_descriptors(index, attributes, config)
        if not descriptors:
            return None
        boxes, valid = boxes_from_masks(masks[index])
        if not bool(valid.any()):
            return None
        expressions = [describe(d) for d in descriptors]
        ranked = sorted(zip(expressions, descriptors), key=lambda pair: (len(pair[1]), pair[0]))
        objects.append(
            SyntheticObject(
                attributes=attributes[index],
                masks=masks[index],
                boxes=boxes.numpy(),
                valid=valid.numpy(),
                visible_fraction=visible_fraction[index],
                expressions=tuple(e for e, _ in ranked),
                descriptors=tuple(d for _, d in ranked),
                depth=int(depth[index]),
            )
        )

    if config.noise_std > 0:
        # Uniform noise of the requested spread: several times cheaper to draw than Gaussian.
        noise = rng.random(frames.shape, dtype=np.float32)
        noise -= np.float32(0.5)
        noise *= np.float32(2.0 * math.sqrt(3.0) * config.noise_std)
        frames += noise
    frames += np.float32(0.5)  # round half up in the cast below
    frames = np.clip(frames, 0, 255, out=frames).astype(np.uint8)
    return SyntheticClip(frames=frames, objects=tuple(objects))


def generate_clip(
    seed: int | np.random.SeedSequence | np.random.Generator, config: SceneConfig | None = None
) -> SyntheticClip:
    """Generate one clip.

    Args:
        seed: an int or SeedSequence (the clip is a pure function of it and the config), or a
            Generator to draw from.
        config: scene parameters; defaults to :class:`SceneConfig`.

    Returns:
        A :class:`SyntheticClip` with frames uint8 [T, H, W, 3]; every object has at least one
        valid frame and at least one expression that describes it alone.
    """
    config = SceneConfig() if config is None else config
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for _ in range(_MAX_ATTEMPTS):
        clip = _try_generate(rng, config)
        if clip is not None:
            return clip
    raise ValueError(
        f"no clip in {_MAX_ATTEMPTS} attempts gave every object a unique expression and enough "
        f"visibility; allow more attributes, colours or shapes, or fewer objects ({config})"
    )


def pick_expression(rng: np.random.Generator, obj: SyntheticObject) -> str:
    """One expression of ``obj``: a number of attributes drawn uniformly among those its expressions
    use, then an expression with that many, so short and long expressions are equally common."""
    lengths = sorted({len(d) for d in obj.descriptors})
    length = lengths[rng.integers(len(lengths))]
    choices = [i for i, d in enumerate(obj.descriptors) if len(d) == length]
    return obj.expressions[choices[rng.integers(len(choices))]]


class SyntheticRVOS(Dataset):
    """Synthetic referring clips in the Ref-YouTube-VOS training item format.

    Item ``i`` of epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``, so it is identical
    whichever worker, process or order reads it; :meth:`set_epoch` (as on the benchmark datasets)
    gives training fresh clips each epoch, and without it every epoch sees the clips of epoch 0.
    An item holds one clip, one of its objects (uniformly) and one
    of that object's expressions (first a number of attributes uniformly among those available,
    then an expression with that many), so short and long expressions are equally common.

    An item is ``(video, target)``: video float32 [T, 3, H, W] ImageNet-normalised, target as
    :func:`bifit.data.targets.build_target` builds it. With ``expressions_per_clip=K > 1`` an item
    is ``(video, [target, ...])``: K different objects of the clip (all of them when it has fewer),
    one expression each, drawn as above; training then runs the backbone once for all of them
    (:func:`bifit.data.collate.collate_expressions`) and learns from expressions that tell apart
    objects of the same frames.
    """

    def __init__(
        self,
        num_samples: int,
        num_frames: int = 6,
        size: tuple[int, int] = (96, 128),
        seed: int = 0,
        expressions_per_clip: int = 1,
        **scene: Any,
    ) -> None:
        """Describe the dataset; clips are generated when items are read.

        Args:
            num_samples: number of items per epoch.
            num_frames: frames per clip.
            size: ``(H, W)`` of the frames.
            seed: base seed; non-negative.
            expressions_per_clip: objects referred to per item (see the class docstring).
            **scene: further :class:`SceneConfig` fields (``min_objects``, ``attributes``, ...).
        """
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if expressions_per_clip < 1:
            raise ValueError(f"expressions_per_clip must be >= 1, got {expressions_per_clip}")
        self.expressions_per_clip = int(expressions_per_clip)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0
        self.config = SceneConfig(num_frames=num_frames, size=(int(size[0]), int(size[1])), **scene)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose clips the items hold (use non-persistent DataLoader workers)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def sample(self, index: int) -> tuple[SyntheticClip, int, str]:
        """The raw clip of item ``index``, the index of the referred object and the expression
        (the first of :meth:`sample_expressions`)."""
        clip, referred = self.sample_expressions(index)
        return clip, *referred[0]

    def sample_expressions(self, index: int) -> tuple[SyntheticClip, list[tuple[int, str]]]:
        """The raw clip of item ``index`` and its ``(object index, expression)`` pairs."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.epoch, int(index))))
        clip = generate_clip(rng, self.config)
        if self.expressions_per_clip == 1:
            targets = [int(rng.integers(len(clip.objects)))]
        else:
            count = min(self.expressions_per_clip, len(clip.objects))
            targets = [int(i) for i in rng.choice(len(clip.objects), size=count, replace=False)]
        return clip, [(target, pick_expression(rng, clip.objects[target])) for target in targets]

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any] | list[dict[str, Any]]]:
        clip, referred = self.sample_expressions(index)
        targets = [build_target(clip.objects[target].masks, expression) for target, expression in referred]
        return normalize_frames(clip.frames), targets[0] if self.expressions_per_clip == 1 else targets


def denormalize_video(video: Tensor) -> np.ndarray:
    """Undo ImageNet normalisation: float [T, 3, H, W] -> uint8 [T, H, W, 3]."""
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [T, 3, H, W], got {tuple(video.shape)}")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (video.detach().cpu().float() * std + mean) * 255.0
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
