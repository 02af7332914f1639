"""Tests of the A2D-Sentences loader on a tiny dataset in the distributed layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from media import write_a2d_instances, write_a2d_tables, write_video
from bifit.data import transforms as T
from bifit.data import video as video_module
from bifit.data.a2d import (
    A2DSample,
    A2DSentencesDataset,
    build_a2d_samples,
    centered_window,
    load_a2d_samples,
    read_a2d_masks,
    save_a2d_samples,
)
from bifit.data.normalization import IMAGENET_MEAN, IMAGENET_STD

H, W, NUM_FRAMES = 48, 64, 12
# video -> (subset, {annotated frame (1-based): {instance: (row, col) of an 8x10 box}})
VIDEOS = {
    "trainA": (0, {3: {1: (4, 6), 2: (30, 40)}, 9: {1: (6, 8)}}),
    "trainB": (0, {1: {5: (10, 10)}}),
    "testA": (1, {2: {1: (20, 20)}, 12: {1: (22, 30), 3: (2, 2)}}),
    "missed": (0, {1: {1: (0, 0)}}),
}
ANNOTATIONS = [  # video_id, instance_id, query
    ("trainA", "1", "The man on the LEFT"),
    ("trainA", "2", "a dog, jumping"),
    ("trainA", "1 (copy)", "duplicate row"),
    ("trainB", "5", "bird flying"),
    ("testA", "1", "a ball rolling"),
    ("testA", "3", "a cat"),
    ("missed", "1", "never used"),
]



def box_mask(row: int, col: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[row : row + 8, col : col + 10] = 1
    return mask


def make_a2d(root: Path) -> Path:
    (root / "Release" / "clips320H").mkdir(parents=True)
    masks_dir = root / "text_annotations" / "a2d_annotation_with_instances"
    rows = []
    for video, (subset, frames) in VIDEOS.items():
        values = (np.arange(NUM_FRAMES) * 20 % 256).astype(np.uint8)
        write_video(
            root / "Release" / "clips320H" / f"{video}.mp4",
            np.broadcast_to(values[:, None, None, None], (NUM_FRAMES, H, W, 3)),
        )
        rows.append([video, "11", "0", "1", str(H), str(W), str(NUM_FRAMES), str(len(frames)), str(subset)])
        for frame, instances in frames.items():
            write_a2d_instances(masks_dir / video / f"{frame:05d}.h5",
                                {i: box_mask(*rc) for i, rc in instances.items()})
    write_a2d_tables(root, rows, ANNOTATIONS, "missed\n")
    return root


@pytest.fixture(scope="module")
def a2d_root(tmp_path_factory) -> Path:
    return make_a2d(tmp_path_factory.mktemp("a2d"))


def test_samples_built_like_mttr(a2d_root):
    train = build_a2d_samples(a2d_root, "train")
    assert train == [
        A2DSample("the man on the left", "trainA", 3, 1),
        A2DSample("the man on the left", "trainA", 9, 1),
        A2DSample("a dog, jumping", "trainA", 3, 2),
        A2DSample("bird flying", "trainB", 1, 5),
    ]
    test = build_a2d_samples(a2d_root, "test")
    assert [(s.frame_idx, s.instance_id) for s in test] == [(2, 1), (12, 1), (12, 3)]


def test_samples_json_is_preferred_when_present(a2d_root, tmp_path):
    samples = build_a2d_samples(a2d_root, "test")[:1]
    save_a2d_samples(samples, tmp_path / "a2d_sentences_single_frame_test_annotations.json")
    assert json.loads((tmp_path / "a2d_sentences_single_frame_test_annotations.json").read_text()) == [
        ["a ball rolling", "testA", 2, 1]
    ]
    assert load_a2d_samples(tmp_path, "test") == samples


def test_h5_masks_are_transposed_to_hw(a2d_root):
    instances, masks = read_a2d_masks(
        a2d_root / "text_annotations" / "a2d_annotation_with_instances" / "trainA" / "00003.h5"
    )
    assert instances == [1, 2] and masks.shape == (2, H, W) and masks.dtype == bool
    assert np.array_equal(masks[1], box_mask(30, 40).astype(bool))
    instances, masks = read_a2d_masks(
        a2d_root / "text_annotations" / "a2d_annotation_with_instances" / "trainB" / "00001.h5"
    )
    assert instances == [5] and masks.shape == (1, H, W)


def test_eval_item_window_and_target(a2d_root):
    ds = A2DSentencesDataset(a2d_root, "test", num_frames=6, transforms=T.Compose([T.ToTensorNormalize()]))
    video, target = ds[2]  # testA frame 12 (the last), instance 3
    assert video.shape == (6, 3, H, W)
    # window 9..14 (1-based) -> 0-based 8..13, clamped to the last frame 11
    assert target["frames_idx"].tolist() == [8, 9, 10, 11, 11, 11]
    assert target["valid_indices"].tolist() == [3]
    assert target["image_id"] == "v_testA_f_12_i_3"
    assert target["masks"].shape == (1, H, W) and target["masks"].dtype == torch.bool
    assert torch.equal(target["masks"][0], torch.from_numpy(box_mask(2, 2).astype(bool)))
    x1, y1, x2, y2 = 2, 2, 11, 9
    expected = torch.tensor([[(x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H]])
    assert torch.allclose(target["boxes"], expected)
    assert target["labels"].tolist() == [0] and target["valid"].tolist() == [1]
    assert target["caption"] == "a cat" and target["orig_size"].tolist() == [H, W]
    # decoded frames are those of the video (grey level 20 * frame)
    mean = torch.tensor(IMAGENET_MEAN)[0]
    std = torch.tensor(IMAGENET_STD)[0]
    grey = (video[:, 0].mean(dim=(1, 2)) * std + mean) * 255
    assert torch.allclose(grey, torch.tensor([160.0, 180, 200, 220, 220, 220]), atol=4)


def test_official_eval_transform_resizes_to_360(a2d_root):
    video, target = A2DSentencesDataset(a2d_root, "test", num_frames=4)[0]
    assert video.shape == (4, 3, 360, 480)
    assert target["masks"].shape == (1, 360, 480) and target["size"].tolist() == [360, 480]
    assert target["frames_idx"].tolist() == [0, 0, 1, 2] and target["valid_indices"].tolist() == [2]


def test_train_items_are_seeded_and_contain_the_annotated_frame(a2d_root):
    ds = A2DSentencesDataset(a2d_root, "train", num_frames=5, seed=3)
    v1, t1 = ds[1]
    v2, t2 = ds[1]
    assert torch.equal(v1, v2) and torch.equal(t1["boxes"], t2["boxes"])
    frames = t1["frames_idx"].tolist()
    assert len(frames) == 5 and frames[t1["valid_indices"].item()] == 8  # frame 9 (1-based)
    assert min(v1.shape[-2:]) in T.TRAIN_SCALES and t1["valid"].item() == 1
    assert t1["masks"].shape == (1, *v1.shape[-2:])
    draws = set()
    for epoch in range(5):
        ds.set_epoch(epoch)
        draws.add(tuple(ds[1][1]["frames_idx"].tolist()))
    assert len(draws) > 1


def test_decoded_frames_are_cached_in_memory_and_on_disk(a2d_root, tmp_path, monkeypatch):
    calls: list[Path] = []
    real = video_module.read_video_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(video_module, "read_video_file", counting)
    cache_dir = tmp_path / "cache"
    ds = A2DSentencesDataset(a2d_root, "test", num_frames=3, cache_dir=cache_dir)
    first = [ds[i][0] for i in range(len(ds))]  # three samples of the same video
    assert len(calls) == 1
    assert (cache_dir / "testA.npy").is_file()
    # a new dataset (another worker or run) reads the disk cache without decoding
    again = A2DSentencesDataset(a2d_root, "test", num_frames=3, cache_dir=cache_dir, max_videos_in_memory=0)
    second = [again[i][0] for i in range(len(again))]
    assert len(calls) == 1
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_centered_window_and_bad_inputs(a2d_root, tmp_path):
    assert centered_window(0, 4, 0, 9) == [0, 0, 0, 1]
    assert centered_window(5, 5, 1, 6) == [3, 4, 5, 6, 6]
    with pytest.raises(ValueError):
        A2DSentencesDataset(a2d_root, "val")
    with pytest.raises(FileNotFoundError):
        A2DSentencesDataset(tmp_path / "missing")
    bad = A2DSentencesDataset(a2d_root, "test", samples=[A2DSample("x", "testA", 40, 1)])
    with pytest.raises(ValueError, match="outside"):
        bad[0]
