"""Tests of the JHMDB-Sentences loader on a tiny dataset in the distributed layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from bifit.data import transforms as T
from bifit.data.jhmdb import JHMDBSentencesDataset, build_jhmdb_samples, load_jhmdb_samples, read_part_masks
from bifit.data.normalization import IMAGENET_MEAN, IMAGENET_STD

H, W = 30, 40
VIDEOS = {"brush_hair": ("girl_brushing", 7, 6), "catch": ("ball_catch", 5, 5)}  # action: (video, frames, masks)


def part_masks(num: int) -> np.ndarray:
    masks = np.zeros((H, W, num), np.uint8)
    for t in range(num):
        masks[3 + t : 13 + t, 5 : 20 + t, t] = 1
    return masks


def make_jhmdb(root: Path) -> Path:
    for action, (video, num_frames, num_masks) in VIDEOS.items():
        frames = root / "Rename_Images" / action / video
        frames.mkdir(parents=True)
        for i in range(1, num_frames + 1):  # 1-based
            Image.new("RGB", (W, H), (20 * i, 0, 0)).save(frames / f"{i:05d}.png")
        masks = root / "puppet_mask" / action / video
        masks.mkdir(parents=True)
        scipy.io.savemat(masks / "puppet_mask.mat", {"part_mask": part_masks(num_masks)})
    (root / "jhmdb_annotation.txt").write_text(
        "video_id,query\ngirl_brushing,girl brushing her hair\nball_catch,the Man catching\n"
    )
    # paths carry the prefix of the machine that generated them, as in the distributed file
    metadata = [
        [
            "girl_brushing",
            "./jhmdb_sentences/Rename_Images/brush_hair/girl_brushing/00001.png",
            "./jhmdb_sentences/puppet_mask/brush_hair/girl_brushing/puppet_mask.mat",
            6,
            "girl  brushing her hair",
        ],
        [
            "ball_catch",
            "/data/x/jhmdb_sentences/Rename_Images/catch/ball_catch/00004.png",
            "/data/x/jhmdb_sentences/puppet_mask/catch/ball_catch/puppet_mask.mat",
            5,
            "the Man catching",
        ],
    ]
    (root / "jhmdb_sentences_samples_metadata.json").write_text(json.dumps(metadata))
    return root


@pytest.fixture(scope="module")
def jhmdb_root(tmp_path_factory) -> Path:
    return make_jhmdb(tmp_path_factory.mktemp("jhmdb_sentences"))


def test_metadata_paths_are_resolved_against_root(jhmdb_root):
    samples = load_jhmdb_samples(jhmdb_root)
    assert samples[0].frames_dir == jhmdb_root / "Rename_Images" / "brush_hair" / "girl_brushing"
    assert samples[1].masks_path == jhmdb_root / "puppet_mask" / "catch" / "ball_catch" / "puppet_mask.mat"
    assert [s.frame_idx for s in samples] == [1, 4]


def test_part_mask_mat_is_read_as_thw(jhmdb_root):
    masks = read_part_masks(jhmdb_root / "puppet_mask" / "catch" / "ball_catch" / "puppet_mask.mat")
    assert masks.shape == (5, H, W) and masks.dtype == bool
    assert np.array_equal(masks[2], part_masks(5)[..., 2].astype(bool))


def test_eval_item(jhmdb_root):
    ds = JHMDBSentencesDataset(jhmdb_root, num_frames=4, transforms=T.Compose([T.ToTensorNormalize()]))
    video, target = ds[0]
    assert video.shape == (4, 3, H, W)
    # 1-based window 1-2..1+1 clamped to [1, 6]
    assert target["frames_idx"].tolist() == [1, 1, 1, 2]
    assert target["valid_indices"].tolist() == [0]
    assert target["image_id"] == "v_girl_brushing_f_1"
    assert target["caption"] == "girl brushing her hair"
    assert torch.equal(target["masks"][0], torch.from_numpy(part_masks(6)[..., 0].astype(bool)))
    x1, y1, x2, y2 = 5, 3, 19, 12
    assert torch.allclose(
        target["boxes"], torch.tensor([[(x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H]])
    )
    assert target["valid"].tolist() == [1] and target["labels"].tolist() == [0]
    red = (video[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    assert torch.allclose(red, torch.tensor([20.0, 20, 20, 40]), atol=0.5)
    _, last = ds[1]  # frame 4 of 5: window 2..5
    assert last["frames_idx"].tolist() == [2, 3, 4, 5] and last["valid_indices"].tolist() == [2]


def test_default_eval_transform(jhmdb_root):
    video, target = JHMDBSentencesDataset(jhmdb_root, num_frames=2)[1]
    assert video.shape == (2, 3, 360, 480) and target["size"].tolist() == [360, 480]
    assert target["orig_size"].tolist() == [H, W]


def test_build_samples_is_seeded_and_skips_frames_without_masks(jhmdb_root):
    a = build_jhmdb_samples(jhmdb_root, seed=0)
    assert a == build_jhmdb_samples(jhmdb_root, seed=0)
    assert len(a) == 6
    brushing = [s for s in a if s.video_id == "girl_brushing"]
    assert all(s.frame_idx <= 6 and s.total_frames == 6 for s in brushing)  # frame 7 has no mask
    assert [s.frame_idx for s in brushing] == sorted(s.frame_idx for s in brushing)


def test_bad_metadata_paths_are_reported(jhmdb_root, tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(json.dumps([["v", "frames/00001.png", "puppet_mask/a/v/puppet_mask.mat", 3, "q"]]))
    with pytest.raises(ValueError, match="Rename_Images"):
        load_jhmdb_samples(jhmdb_root, path)
    with pytest.raises(FileNotFoundError):
        JHMDBSentencesDataset(tmp_path / "missing")
