"""The procedurally generated referring clips: determinism, format, ground truth and expressions."""

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bifit.data.collate import collate_fn
from bifit.data.synthetic import (
    COLOURS,
    SceneConfig,
    SyntheticClip,
    SyntheticRVOS,
    denormalize_video,
    describe,
    generate_clip,
    matches,
)
from bifit.data.targets import boxes_from_masks

NUM_CLIPS = 150


@pytest.fixture(scope="module")
def clips() -> list[SyntheticClip]:
    return [generate_clip(seed) for seed in range(NUM_CLIPS)]


def _same_clip(a: SyntheticClip, b: SyntheticClip) -> bool:
    if not np.array_equal(a.frames, b.frames) or len(a.objects) != len(b.objects):
        return False
    return all(
        np.array_equal(x.masks, y.masks) and x.expressions == y.expressions and x.attributes == y.attributes
        for x, y in zip(a.objects, b.objects)
    )


def _parse(expression: str) -> dict[str, str]:
    """Read an expression back into attributes, independently of the generator's templates."""
    stated: dict[str, str] = {}
    text = expression
    motion = re.search(r" (moving|standing still)$", text)
    if motion:
        stated["motion"] = "moving" if motion.group(1) == "moving" else "still"
        text = text[: motion.start()]
    position = re.search(r" (at the (top|bottom)(?: (left|right))?|on the (left|right))$", text)
    if position:
        if position.group(2):
            stated["vertical"] = position.group(2)
        if position.group(3) or position.group(4):
            stated["horizontal"] = position.group(3) or position.group(4)
        text = text[: position.start()]
    words = text.split()
    assert words[0] == "the", expression
    assert words[-1] in ("circle", "square", "triangle", "diamond", "shape"), expression
    if words[-1] != "shape":
        stated["shape"] = words[-1]
    for word in words[1:-1]:
        key = "size" if word in ("small", "big") else "colour"
        assert key == "size" or word in COLOURS, expression
        stated[key] = word
    return stated


def _centroids(masks: np.ndarray) -> np.ndarray:
    """[T, 2] (x, y) centroid per frame, NaN where the mask is empty."""
    out = np.full((masks.shape[0], 2), np.nan)
    for t, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            out[t] = xs.mean(), ys.mean()
    return out


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_clip_and_different_seed_different_clip():
    assert _same_clip(generate_clip(11), generate_clip(11))
    assert _same_clip(generate_clip(np.random.SeedSequence(11)), generate_clip(11))
    assert not np.array_equal(generate_clip(11).frames, generate_clip(12).frames)


def test_dataset_items_do_not_depend_on_order_instance_or_process():
    dataset = SyntheticRVOS(6, num_frames=3, size=(48, 64), seed=5)
    forward = [dataset[i] for i in range(6)]
    backward = [SyntheticRVOS(6, num_frames=3, size=(48, 64), seed=5)[i] for i in reversed(range(6))][::-1]
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_fn)
    from_workers = [(v, t) for videos, _, targets in loader for v, t in zip(videos, targets)]
    for (v1, t1), (v2, t2), (v3, t3) in zip(forward, backward, from_workers):
        assert torch.equal(v1, v2) and torch.equal(v1, v3)
        assert t1["caption"] == t2["caption"] == t3["caption"]
        assert torch.equal(t1["masks"], t2["masks"]) and torch.equal(t1["masks"], t3["masks"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], forward[0][0])  # a new epoch brings new clips
    dataset.set_epoch(0)
    assert torch.equal(dataset[0][0], forward[0][0])
    other_seed = SyntheticRVOS(6, num_frames=3, size=(48, 64), seed=6)
    assert not torch.equal(other_seed[0][0], forward[0][0])
    assert not torch.equal(forward[0][0], forward[1][0])


# --- dataset items ---------------------------------------------------------------------------


def test_item_format_matches_the_benchmark_datasets():
    dataset = SyntheticRVOS(3, num_frames=4, size=(64, 80), seed=1)
    assert len(dataset) == 3
    for index in range(3):
        video, target = dataset[index]
        clip, obj, expression = dataset.sample(index)
        assert video.shape == (4, 3, 64, 80) and video.dtype == torch.float32
        # ImageNet-normalised: undoing the normalisation gives back the generated frames exactly
        assert np.array_equal(denormalize_video(video), clip.frames)
        assert target["caption"] == expression and expression in clip.objects[obj].expressions
        assert torch.equal(target["masks"], torch.from_numpy(clip.objects[obj].masks))
        assert target["masks"].dtype == torch.bool and target["masks"].shape == (4, 64, 80)
        assert target["labels"].dtype == torch.int64 and not target["labels"].any()
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (4, 4)
        assert target["valid"].dtype == torch.int32 and target["valid"].any()
        assert target["size"].tolist() == target["orig_size"].tolist() == [64, 80]
        assert target["frames_idx"].tolist() == [0, 1, 2, 3]
        # normalised cxcywh boxes go back to the mask's inclusive pixel bounds
        cx, cy, w, h = (target["boxes"] * torch.tensor([80, 64, 80, 64])).unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        expected, valid = boxes_from_masks(target["masks"])
        torch.testing.assert_close(xyxy, expected, rtol=0, atol=1e-4)
        assert torch.equal(valid, target["valid"])


def test_items_with_several_expressions_refer_to_different_objects_of_one_clip():
    single = SyntheticRVOS(12, num_frames=3, size=(64, 80), seed=4)
    several = SyntheticRVOS(12, num_frames=3, size=(64, 80), seed=4, expressions_per_clip=3)
    counts = []
    for index in range(12):
        video, targets = several[index]
        clip, referred = several.sample_expressions(index)
        assert isinstance(targets, list) and len(targets) == len(referred) == min(3, len(clip.objects))
        counts.append(len(targets))
        objects = [obj for obj, _ in referred]
        assert len(set(objects)) == len(objects)
        assert np.array_equal(denormalize_video(video), clip.frames)
        for target, (obj, expression) in zip(targets, referred):
            assert target["caption"] == expression and expression in clip.objects[obj].expressions
            assert torch.equal(target["masks"], torch.from_numpy(clip.objects[obj].masks))
        # the clip is the one the single-expression dataset shows at this index
        assert torch.equal(single[index][0], video)
    assert 2 in counts and 3 in counts
    with pytest.raises(ValueError, match="expressions_per_clip"):
        SyntheticRVOS(2, expressions_per_clip=0)


def test_single_frame_clips_never_mention_motion():
    dataset = SyntheticRVOS(10, num_frames=1, size=(48, 48), seed=2)
    for index in range(10):
        clip, _, _ = dataset.sample(index)
        for obj in clip.objects:
            assert obj.attributes.motion == "still"
            assert not any("moving" in e or "still" in e for e in obj.expressions)
    assert dataset[0][0].shape == (1, 3, 48, 48)


def test_out_of_range_index_raises_index_error():
    with pytest.raises(IndexError):
        SyntheticRVOS(2)[2]


# --- ground truth ----------------------------------------------------------------------------


def test_objects_have_consistent_masks_boxes_and_visibility(clips):
    for clip in clips[:40]:
        num_frames, height, width, _ = clip.frames.shape
        claimed = np.zeros((num_frames, height, width), dtype=np.int64)
        for obj in clip.objects:
            assert obj.masks.shape == (num_frames, height, width) and obj.masks.dtype == bool
            boxes, valid = boxes_from_masks(obj.masks)
            assert np.array_equal(obj.boxes, boxes.numpy()) and np.array_equal(obj.valid, valid.numpy())
            assert obj.valid.any()
            assert np.array_equal(obj.visible_fraction > 0, obj.masks.any(axis=(1, 2)))
            assert np.all(obj.visible_fraction <= 1.0)
            claimed += obj.masks
        assert claimed.max() <= 1  # visible masks never overlap
        assert sorted(obj.depth for obj in clip.objects) == list(range(len(clip.objects)))


def test_clips_contain_occlusions_exits_and_distractors(clips):
    occluded = left_frame = same_colour = same_shape = 0
    for clip in clips:
        for obj in clip.objects:
            masks = obj.masks
            touches_border = masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
            occluded += bool(np.any((obj.visible_fraction > 0) & (obj.visible_fraction < 1) & ~touches_border))
            present = masks.any(axis=(1, 2))
            left_frame += bool(present[0] and not present[-1])
        kinds = [o.attributes for o in clip.objects]
        pairs = [(a, b) for i, a in enumerate(kinds) for b in kinds[i + 1 :]]
        same_colour += any(a.colour == b.colour and a.shape != b.shape for a, b in pairs)
        same_shape += any(a.shape == b.shape and a.colour != b.colour for a, b in pairs)
    assert occluded >= NUM_CLIPS // 10
    assert left_frame >= NUM_CLIPS // 10
    assert same_colour >= NUM_CLIPS // 5 and same_shape >= NUM_CLIPS // 5


def test_drawn_colour_size_and_shape_match_the_attributes(clips):
    palette = {name: np.array(COLOURS[name], dtype=np.float64) for name in SceneConfig().colours}
    fill = {"square": (0.9, 1.01), "circle": (0.68, 0.86), "triangle": (0.4, 0.62)}
    for clip in clips[:40]:
        areas = {"small": [], "big": []}
        for obj in clip.objects:
            median = np.median(clip.frames[obj.masks], axis=0)
            nearest = min(palette, key=lambda name: np.abs(palette[name] - median).sum())
            assert nearest == obj.attributes.colour
            seen = obj.visible_fraction > 0
            areas[obj.attributes.size].append(np.median(obj.masks[seen].sum(axis=(1, 2)) / obj.visible_fraction[seen]))
            for t in np.nonzero(obj.visible_fraction == 1.0)[0]:
                x1, y1, x2, y2 = obj.boxes[t]
                ratio = obj.masks[t].sum() / ((x2 - x1 + 1) * (y2 - y1 + 1))
                low, high = fill[obj.attributes.shape]
                assert low <= ratio <= high, (obj.attributes.shape, ratio)
        if areas["small"] and areas["big"]:
            assert min(areas["big"]) > 2 * max(areas["small"])


def test_motion_words_match_how_a_lone_object_moves():
    config = SceneConfig(min_objects=1, max_objects=1, leave_prob=0.0, size=(96, 128))
    for seed in range(30):
        obj = generate_clip(seed, config).objects[0]
        start, end = _centroids(obj.masks)[[0, -1]]
        dx, dy = end - start
        motion = obj.attributes.direction
        if motion == "still":
            assert all(np.array_equal(obj.masks[0], m) for m in obj.masks)
            continue
        along, across, length = (dx, dy, 128) if motion in ("left", "right") else (dy, dx, 96)
        sign = -1 if motion in ("left", "up") else 1
        assert sign * along >= 0.15 * length, (motion, dx, dy)
        assert abs(across) <= 0.08 * (96 if motion in ("left", "right") else 128)


def test_position_words_mean_extreme_in_every_shared_frame(clips):
    checked = 0
    for clip in clips:
        _, height, width, _ = clip.frames.shape
        centres = [_centroids(o.masks) for o in clip.objects]
        for index, obj in enumerate(clip.objects):
            for axis, word, sign, side in (
                (1, obj.attributes.vertical, {"top": 1, "bottom": -1}, height),
                (0, obj.attributes.horizontal, {"left": 1, "right": -1}, width),
            ):
                if word is None:
                    continue
                checked += 1
                for other, theirs in enumerate(centres):
                    if other == index:
                        continue
                    shared = ~np.isnan(centres[index][:, axis]) & ~np.isnan(theirs[:, axis])
                    assert shared.any()
                    gap = sign[word] * (theirs[shared, axis] - centres[index][shared, axis])
                    assert np.all(gap >= 0.1 * side - 1e-9)
    assert checked >= NUM_CLIPS // 5


# --- expressions -----------------------------------------------------------------------------


def test_every_expression_refers_to_exactly_its_object(clips):
    for clip in clips:
        for index, obj in enumerate(clip.objects):
            assert obj.expressions and len(obj.expressions) == len(obj.descriptors)
            assert len(set(obj.expressions)) == len(obj.expressions)
            for expression, descriptor in zip(obj.expressions, obj.descriptors):
                assert describe(descriptor) == expression
                assert [matches(o.attributes, descriptor) for o in clip.objects].count(True) == 1
                assert matches(obj.attributes, descriptor)
                # read back from the text alone
                stated = _parse(expression)
                assert stated == dict(descriptor)
                hits = [
                    i
                    for i, o in enumerate(clip.objects)
                    if all(getattr(o.attributes, k) == v for k, v in stated.items())
                ]
                assert hits == [index], expression


@pytest.mark.parametrize(
    "config",
    [
        SceneConfig(),
        SceneConfig(num_frames=12),
        SceneConfig(num_frames=3, size=(64, 96), max_objects=4),
        SceneConfig(num_frames=4, twin_prob=0.5),
    ],
    ids=["default", "12-frames", "crowded", "twins"],
)
def test_every_expression_resolves_its_object_without_the_direction_of_motion(config):
    """BIFIT cannot see frame order, so the direction of motion must never be what singles an object
    out: read each expression's words, match them against every object with its direction forgotten
    (moving or still only), and exactly the referred object must fit."""
    direction_words = re.compile(r"\b(moving|going|heading) (left|right|up|down)\b|\b(leftwards|rightwards|upwards|downwards)\b")
    moving_objects = 0
    for seed in range(200):
        clip = generate_clip(seed, config)
        blind = []
        for obj in clip.objects:
            seen = dict(vars(obj.attributes))
            seen["motion"] = "still" if seen.pop("direction") == "still" else "moving"
            blind.append(seen)
            moving_objects += seen["motion"] == "moving"
        for index, obj in enumerate(clip.objects):
            for expression in obj.expressions:
                assert not direction_words.search(expression), expression
                stated = _parse(expression)
                fitting = [i for i, seen in enumerate(blind) if all(seen[k] == v for k, v in stated.items())]
                assert fitting == [index], (seed, expression)
    assert moving_objects > 100


def test_twins_look_alike_differ_in_motion_and_cross():
    """With twin_prob=1 the second of two objects copies the first's colour, shape and size, takes the
    opposite motion and is placed to overlap it; only motion (or where they lie) tells them apart."""
    config = SceneConfig(num_frames=4, min_objects=2, max_objects=2, twin_prob=1.0)
    crossing = motion_only = 0
    for seed in range(40):
        first, second = generate_clip(seed, config).objects
        a, b = first.attributes, second.attributes
        assert (a.colour, a.shape, a.size) == (b.colour, b.shape, b.size), seed
        assert {a.motion, b.motion} == {"moving", "still"}, seed
        for obj in (first, second):
            for descriptor in obj.descriptors:
                assert {name for name, _ in descriptor} - {"colour", "shape", "size"}, (seed, descriptor)
        motion_only += any({name for name, _ in d} == {"motion"} for d in first.descriptors)
        boxes = [np.where(o.valid[:, None], o.boxes, np.nan) for o in (first, second)]  # [T, 4] x0 y0 x1 y1
        overlap_x = np.minimum(boxes[0][:, 2], boxes[1][:, 2]) > np.maximum(boxes[0][:, 0], boxes[1][:, 0])
        overlap_y = np.minimum(boxes[0][:, 3], boxes[1][:, 3]) > np.maximum(boxes[0][:, 1], boxes[1][:, 1])
        crossing += bool(np.any(overlap_x & overlap_y))
    assert crossing >= 36
    assert motion_only == 40


def test_twins_are_drawn_only_when_asked_for():
    """twin_prob=0 draws no extra random numbers: the clips (and the demo's scores) stay as they were."""
    for seed in range(5):
        assert _same_clip(generate_clip(seed, SceneConfig(twin_prob=0.0)), generate_clip(seed, SceneConfig()))
    assert not _same_clip(generate_clip(0, SceneConfig(twin_prob=1.0)), generate_clip(0, SceneConfig()))


def test_each_attribute_is_sometimes_needed_to_resolve_the_target(clips):
    group = {"vertical": "position", "horizontal": "position"}
    needed = set()
    for clip in clips:
        for obj in clip.objects:
            for kind in ("colour", "shape", "size", "position", "motion"):
                if all(any(group.get(name, name) == kind for name, _ in d) for d in obj.descriptors):
                    needed.add(kind)
    assert needed == {"colour", "shape", "size", "position", "motion"}


def test_expressions_from_the_issue_can_occur(clips):
    expressions = {e for clip in clips for obj in clip.objects for e in obj.expressions}
    assert any(re.fullmatch(r"the (small|big) \w+ \w+ moving", e) for e in expressions)
    assert any(re.fullmatch(r"the \w+ standing still", e) for e in expressions)
    assert any(re.fullmatch(r"the (circle|square|triangle) at the (top|bottom)", e) for e in expressions)
    assert describe((("size", "small"), ("colour", "red"), ("shape", "circle"), ("motion", "moving"))) == (
        "the small red circle moving"
    )
    assert describe((("shape", "square"), ("vertical", "top"))) == "the square at the top"


def test_restricted_attributes_are_respected():
    config = SceneConfig(attributes=("colour", "shape"), max_attributes=2)
    for seed in range(10):
        for obj in generate_clip(seed, config).objects:
            assert all({name for name, _ in d} <= {"colour", "shape"} and len(d) <= 2 for d in obj.descriptors)


# --- configuration and rendering -------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colours": ("red", "mauve")}, "colours"),
        ({"shapes": ()}, "shapes"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"num_frames": 0}, "num_frames"),
        ({"size": (16, 128)}, "size"),
        ({"attributes": ("colour", "smell")}, "attributes"),
        ({"leave_prob": 1.5}, "leave_prob"),
        ({"twin_prob": -0.1}, "twin_prob"),
    ],
)
def test_bad_config_raises_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        SceneConfig(**changes)


def test_impossible_scene_raises_value_error():
    config = SceneConfig(colours=("red",), shapes=("circle",), attributes=("colour", "shape"), min_objects=2)
    with pytest.raises(ValueError, match="unique expression"):
        generate_clip(0, config)


def test_many_small_clips_generate_without_error():
    from bifit.data.synthetic import SceneConfig, generate_clip

    config = SceneConfig(num_frames=4, size=(64, 96))
    for seed in range(3000):
        generate_clip(seed, config)
