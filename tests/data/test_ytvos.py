"""Tests of the Ref-YouTube-VOS loader on a tiny dataset in the distributed layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bifit.data import transforms as T
from bifit.data.ytvos import (
    RefVOSDataset,
    ref_ytvos_train,
    sample_train_indices,
    ytvos_heldout_split,
    ytvos_heldout_videos,
    ytvos_valid_videos,
)

H, W = 48, 64
PALETTE = [0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99] + [0] * (256 * 3 - 12)


def save_palette_png(ids: np.ndarray, path: Path) -> None:
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(PALETTE)
    img.save(path)


def write_video(split_dir: Path, video: str, num_frames: int, object_frames: dict[int, range]) -> list[str]:
    """JPEG frames (every 5th number, as YTVOS) and palette PNGs; object k is a box at k*12 px."""
    names = [f"{5 * i:05d}" for i in range(num_frames)]
    (split_dir / "JPEGImages" / video).mkdir(parents=True)
    (split_dir / "Annotations" / video).mkdir(parents=True)
    rng = np.random.default_rng(len(video))
    for t, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            split_dir / "JPEGImages" / video / f"{name}.jpg"
        )
        ids = np.zeros((H, W), np.uint8)
        for obj, frames in object_frames.items():
            if t in frames:
                ids[5 + obj * 12 : 15 + obj * 12, 10 + t : 30 + t] = obj
        save_palette_png(ids, split_dir / "Annotations" / video / f"{name}.png")
    return names


def make_ytvos(root: Path) -> Path:
    """Train: 'vid_a' (8 frames, object 1 everywhere, object 2 only in frames 0-2), 'vid_b' (5 frames),
    'vid_c' (3 frames, expression 'ghost' on object 3 that never appears). Valid: 4 videos, 1 of them test."""
    train = root / "train"
    expressions: dict = {}
    meta: dict = {}
    specs = {
        "vid_a": (8, {1: range(8), 2: range(3)}, {"0": ("The  LEFT cat", "1"), "1": ("a dog on the right", "2")}),
        "vid_b": (5, {1: range(5)}, {"0": ("a person", "1")}),
        "vid_c": (3, {1: range(3), 3: range(0)}, {"0": ("ghost", "3")}),
    }
    categories = {"1": "cat", "2": "dog", "3": "person"}
    for video, (n, objects, exps) in specs.items():
        names = write_video(train, video, n, objects)
        meta[video] = {"objects": {k: {"category": categories[k], "frames": names} for k in ["1", "2", "3"]}}
        # the distributed files list frames unsorted sometimes; the loader sorts them
        expressions[video] = {
            "expressions": {i: {"exp": e, "obj_id": o} for i, (e, o) in exps.items()},
            "frames": list(reversed(names)),
        }
    (train / "meta.json").write_text(json.dumps({"videos": meta}))
    for split, videos in {"train": expressions}.items():
        (root / "meta_expressions" / split).mkdir(parents=True)
        (root / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    valid = {
        v: {"expressions": {"0": {"exp": f"thing in {v}"}}, "frames": ["00000", "00005"]}
        for v in ["v3", "v1", "t1", "v2"]
    }
    test = {"t1": valid["t1"]}
    for split, videos in {"valid": valid, "test": test}.items():
        (root / "meta_expressions" / split).mkdir(parents=True)
        (root / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    return root


@pytest.fixture(scope="module")
def ytvos_root(tmp_path_factory) -> Path:
    return make_ytvos(tmp_path_factory.mktemp("ytvos"))


def _plain(root: Path, **kwargs) -> RefVOSDataset:
    """Dataset with only tensor conversion, so targets can be checked pixel-exactly."""
    return ref_ytvos_train(root, transforms=T.Compose([T.ToTensorNormalize()]), **kwargs)


def test_samples_follow_the_official_enumeration(ytvos_root):
    ds = _plain(ytvos_root, num_frames=3)
    # per expression, one sample every num_frames frames: vid_a 2 exps x ceil(8/3), vid_b ceil(5/3), vid_c 1
    assert len(ds) == 2 * 3 + 2 + 1
    assert [s.frame_id for s in ds.samples[:3]] == [0, 3, 6]
    assert ds.samples[0].frames == tuple(sorted(ds.samples[0].frames))
    assert ds.categories == {"cat": 0, "dog": 1, "person": 2}


def test_item_shapes_boxes_and_validity(ytvos_root):
    ds = _plain(ytvos_root, num_frames=4)
    # sample 2 of vid_a is expression "1" (object 2, present only in frames 0-2) anchored at frame 0
    sample_index = next(i for i, s in enumerate(ds.samples) if s.video == "vid_a" and s.obj_id == 2 and s.frame_id == 0)
    video, target = ds[sample_index]
    assert video.shape == (4, 3, H, W) and video.dtype == torch.float32
    assert target["masks"].shape == (4, H, W) and target["masks"].dtype == torch.bool
    assert target["labels"].tolist() == [1] * 4 and target["labels"].dtype == torch.int64
    assert target["valid"].dtype == torch.int32 and target["boxes"].dtype == torch.float32
    assert target["orig_size"].tolist() == [H, W] and target["size"].tolist() == [H, W]
    assert target["caption"] == "a dog on the right"
    frames = target["frames_idx"].tolist()
    assert frames == sorted(frames) and 0 in frames
    for t, f in enumerate(frames):
        present = f < 3
        assert target["valid"][t].item() == int(present)
        assert target["masks"][t].any().item() == present
        if present:  # inclusive bounds: rows 29..38, cols 10+f..29+f
            x1, y1, x2, y2 = 10 + f, 29, 29 + f, 38
            expected = torch.tensor([(x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H])
            assert torch.allclose(target["boxes"][t], expected)
        else:
            assert target["boxes"][t].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_caption_is_cleaned(ytvos_root):
    ds = _plain(ytvos_root, num_frames=3)
    assert ds[0][1]["caption"] == "the left cat"


def test_sampling_is_seeded_per_item_and_epoch(ytvos_root):
    ds = ref_ytvos_train(ytvos_root, num_frames=5, seed=7)
    v1, t1 = ds[1]
    v2, t2 = ds[1]
    assert torch.equal(v1, v2) and torch.equal(t1["frames_idx"], t2["frames_idx"])
    draws = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        video, target = ds[1]
        draws.add((tuple(video.shape), tuple(target["frames_idx"].tolist())))
    assert len(draws) > 1
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert torch.equal(ds.get_item(0, rng_a)[0], ds.get_item(0, rng_b)[0])


def test_official_training_transforms_on_the_dataset(ytvos_root):
    ds = ref_ytvos_train(ytvos_root, num_frames=6, seed=1)
    for i in range(len(ds)):
        video, target = ds[i]
        assert video.shape[0] == 6 and min(video.shape[-2:]) in T.TRAIN_SCALES
        assert target["masks"].shape[1:] == video.shape[-2:]
        assert target["valid"].any()


def test_clip_without_visible_object_is_replaced(ytvos_root):
    ds = _plain(ytvos_root, num_frames=3)
    ghost = next(i for i, s in enumerate(ds.samples) if s.obj_id == 3)
    _, target = ds[ghost]
    assert target["valid"].any()
    assert target["caption"] != "ghost"


def test_sample_train_indices_rules():
    rng = np.random.default_rng(0)
    for _ in range(200):
        vid_len = int(rng.integers(1, 40))
        frame_id = int(rng.integers(vid_len))
        num_frames = int(rng.integers(1, 9))
        idx = sample_train_indices(frame_id, vid_len, num_frames, 3, rng)
        assert len(idx) == num_frames and idx == sorted(idx)
        assert all(0 <= i < vid_len for i in idx)
        if num_frames >= 2:
            assert frame_id in idx
        if num_frames in (2, 3):  # only the anchor and its local neighbours
            assert all(abs(i - frame_id) <= 3 for i in idx)
    # global frames are distinct when the video is long
    idx = sample_train_indices(50, 100, 6, 3, np.random.default_rng(1))
    assert len(set(idx)) == 6
    assert sample_train_indices(4, 10, 1, 3, rng) == [4]
    a = sample_train_indices(5, 30, 6, 3, np.random.default_rng(9))
    assert a == sample_train_indices(5, 30, 6, 3, np.random.default_rng(9))
    with pytest.raises(ValueError, match="outside"):
        sample_train_indices(10, 10, 6, 3, rng)


def test_valid_split_is_valid_minus_test(ytvos_root):
    videos = ytvos_valid_videos(ytvos_root)
    assert [v.video for v in videos] == ["v1", "v2", "v3"]
    v = videos[0]
    assert v.frame_names == ("00000", "00005")
    assert v.frame_paths[1] == ytvos_root / "valid" / "JPEGImages" / "v1" / "00005.jpg"
    assert v.expressions[0].text == "thing in v1" and v.expressions[0].obj_id is None
    assert v.mask_paths is None


def test_heldout_split_rule_and_gt_paths(ytvos_root):
    train, heldout = ytvos_heldout_split(ytvos_root, every=2)
    assert heldout == ["vid_a", "vid_c"] and train == ["vid_b"]
    assert ytvos_heldout_split(ytvos_root, every=20) == (["vid_b", "vid_c"], ["vid_a"])
    videos = ytvos_heldout_videos(ytvos_root, every=2)
    assert [v.video for v in videos] == ["vid_a", "vid_c"]
    a = videos[0]
    assert a.frame_names == tuple(sorted(a.frame_names))
    assert all(p.is_file() for p in a.mask_paths) and all(p.is_file() for p in a.frame_paths)
    assert [(e.exp_id, e.obj_id) for e in a.expressions] == [("0", 1), ("1", 2)]
    ds = _plain(ytvos_root, num_frames=3, heldout_every=2)
    assert {s.video for s in ds.samples} == {"vid_b"}
    with pytest.raises(ValueError, match="every"):
        ytvos_heldout_split(ytvos_root, every=1)


def test_missing_files_give_clear_errors(tmp_path, ytvos_root):
    with pytest.raises(FileNotFoundError, match="not found"):
        ref_ytvos_train(tmp_path / "nope")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        ref_ytvos_train(tmp_path)
