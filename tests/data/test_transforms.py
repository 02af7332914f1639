"""Tests of the official clip transforms (bifit.data.transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from bifit.data import frame_sizes
from bifit.data import transforms as T
from bifit.data.normalization import IMAGENET_MEAN, IMAGENET_STD


def _clip(num_frames: int = 2, height: int = 48, width: int = 64, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(num_frames)]


def _target(height: int = 48, width: int = 64) -> dict:
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 10:20, 2:5] = True  # rows 10..19, cols 2..4
    masks[1, 30:31, 40:41] = True  # a single pixel: degenerate box
    return {
        "boxes": torch.tensor([[2.0, 10.0, 4.0, 19.0], [40.0, 30.0, 40.0, 30.0]]),
        "masks": masks,
        "size": torch.tensor([height, width]),
        "caption": "the left dog right of the bright cat",
    }


def test_swap_left_right_is_a_substring_swap_like_official():
    assert T.swap_left_right("the left dog right of the bright cat") == "the right dog left of the bleft cat"
    assert T.swap_left_right("leftmost and rightmost") == "rightmost and leftmost"
    assert T.swap_left_right("no sides") == "no sides"


@pytest.mark.parametrize("hw", [(48, 64), (64, 48), (480, 854), (720, 1280), (50, 50)])
@pytest.mark.parametrize("size", [288, 360, 512])
def test_resized_hw_without_max_matches_torchvision(hw, size):
    h, w = hw
    img = Image.new("RGB", (w, h))
    out = TF.resize(img, size)
    assert frame_sizes.resized_hw(h, w, size) == (out.height, out.width)


def test_resized_hw_caps_the_long_side():
    # 1280 / 360 * 512 > 640, so the short side becomes round(640 * 360 / 1280) = 180
    assert frame_sizes.resized_hw(360, 1280, 512, max_size=640) == (180, 640)
    assert frame_sizes.resized_hw(480, 854, 360, max_size=640) == (360, 640)
    assert frame_sizes.resized_hw(480, 640, 512, max_size=640) == (480, 640)
    with pytest.raises(ValueError, match="positive"):
        frame_sizes.resized_hw(0, 10, 360)


@pytest.mark.parametrize("hw", [(480, 854), (720, 1280), (1080, 1920), (2160, 3840), (1280, 720), (360, 1440), (100, 100)])
def test_the_long_side_limit_never_changes_a_normal_input_size(hw):
    for short_side in (360, None):
        expected = hw if short_side is None else frame_sizes.resized_hw(*hw, short_side)
        assert frame_sizes.model_input_hw(*hw, short_side) == expected
        assert frame_sizes.model_input_hw(*hw, short_side, max_long_side=None) == expected


def test_the_long_side_limit_refuses_absurd_shapes_and_can_be_raised():
    with pytest.raises(frame_sizes.FrameSizeError, match=r"a 4000x2 frame resized to 720000x360 \(shorter side 360\) has a "
                       r"longer side of 720000 px, over the limit of 4096 px \(aspect ratio 2000:1\).*--max-long-side"):
        frame_sizes.model_input_hw(2, 4000, 360)
    with pytest.raises(frame_sizes.FrameSizeError, match="a 5000x4000 frame as it is has a longer side of 5000 px"):
        frame_sizes.model_input_hw(4000, 5000, None)
    assert frame_sizes.model_input_hw(2, 100, 32, max_long_side=1600) == (32, 1600)
    with pytest.raises(frame_sizes.FrameSizeError, match="over the limit of 1599 px"):
        frame_sizes.model_input_hw(2, 100, 32, max_long_side=1599)
    assert frame_sizes.model_input_hw(2, 4000, 360, max_long_side=None) == (360, 720000)
    # A cap on the longer side (A2D/JHMDB) would shrink the shorter one to nothing: refused as well.
    with pytest.raises(frame_sizes.FrameSizeError, match="a 4000x2 frame resized to 0x0 .* no pixels left"):
        frame_sizes.model_input_hw(2, 4000, 360, max_size=640)


def test_resize_pixels_match_torchvision_and_masks_use_nearest():
    clip, target = _clip(), _target()
    frames, out = T.resize(clip, target, 96)
    assert frames[0].size == (128, 96)
    assert np.array_equal(np.asarray(frames[0]), np.asarray(TF.resize(clip[0], [96, 128])))
    assert out["masks"].dtype == torch.bool and out["masks"].shape == (2, 96, 128)
    expected = torch.nn.functional.interpolate(target["masks"][:, None].float(), (96, 128), mode="nearest")[:, 0] > 0.5
    assert torch.equal(out["masks"], expected)
    assert torch.allclose(out["boxes"][0], torch.tensor([4.0, 20.0, 8.0, 38.0]))
    assert out["size"].tolist() == [96, 128]
    assert target["size"].tolist() == [48, 64]  # input target untouched


def test_hflip_mirrors_boxes_masks_and_caption():
    clip, target = _clip(), _target()
    frames, out = T.hflip(clip, target)
    assert np.array_equal(np.asarray(frames[0]), np.asarray(clip[0])[:, ::-1])
    assert torch.equal(out["masks"], target["masks"].flip(-1))
    # official quirk: x -> W - x on inclusive bounds (cols 2..4 of 64 -> 60..62 in the mask, box 60..62)
    assert out["boxes"][0].tolist() == [60.0, 10.0, 62.0, 19.0]
    cols = out["masks"][0].any(0).nonzero().flatten()
    assert (cols.min().item(), cols.max().item()) == (59, 61)
    assert out["caption"] == "the right dog left of the bleft cat"


def test_random_horizontal_flip_probability_extremes():
    clip, target = _clip(), _target()
    rng = np.random.default_rng(0)
    _, kept = T.RandomHorizontalFlip(p=0.0)(clip, target, rng)
    _, flipped = T.RandomHorizontalFlip(p=1.0)(clip, target, rng)
    assert kept["caption"] == target["caption"]
    assert flipped["caption"] == "the right dog left of the bleft cat"


def test_crop_clips_boxes_and_check_marks_outside_objects_invalid():
    clip, target = _clip(), _target()
    frames, out = T.crop(clip, target, top=12, left=3, height=20, width=30)
    assert frames[0].size == (30, 20)
    assert out["masks"].shape == (2, 20, 30)
    assert out["boxes"][0].tolist() == [0.0, 0.0, 1.0, 7.0]
    checked = T.check_valid(out)
    assert checked["valid"].tolist() == [1, 0]
    assert checked["boxes"][1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_check_valid_keeps_mask_of_one_pixel_wide_object():
    target = _target()
    out = T.check_valid(target)
    assert out["valid"].dtype == torch.int32
    assert out["valid"].tolist() == [1, 0]
    assert out["masks"][1].sum().item() == 1  # mask kept


def test_hsv_round_trip_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    img = rng.uniform(-40, 300, (20, 30, 3)).astype(np.float32)
    hsv = T._bgr_to_hsv(img)
    np.testing.assert_allclose(hsv, cv2.cvtColor(img, cv2.COLOR_BGR2HSV), atol=1e-3)
    hsv[..., 1] *= 1.4
    hsv[..., 0] = (hsv[..., 0] + 17) % 360
    np.testing.assert_allclose(T._hsv_to_bgr(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), atol=1e-2)


def test_hsv_conversions_are_opencvs_to_the_bit_on_views_and_out_of_range_values():
    # The official distortion calls OpenCV's float conversions; ours must give its exact floats, also for
    # the non-contiguous arrays that slicing makes and for values the brightness step pushed out of [0, 255].
    cv2 = pytest.importorskip("cv2")
    img = np.random.default_rng(2).uniform(-40, 300, (24, 64, 3)).astype(np.float32)[:, ::2]
    img[3, :, 1] = img[3, :, 0]  # ties between channels pick the hue formula by channel order
    hsv = T._bgr_to_hsv(img)
    np.testing.assert_array_equal(hsv, cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV))
    hsv[..., 1] *= np.float32(1.4)
    np.testing.assert_array_equal(T._hsv_to_bgr(hsv), cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))


def test_photometric_distort_is_seeded_and_changes_pixels():
    img = _clip(1)[0]
    a = T.photometric_distort(img, np.random.default_rng(3))
    b = T.photometric_distort(img, np.random.default_rng(3))
    assert a.size == img.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    outs = [np.asarray(T.photometric_distort(img, np.random.default_rng(s))) for s in range(8)]
    assert any(not np.array_equal(o, np.asarray(img)) for o in outs)


def test_train_pipeline_is_deterministic_and_respects_scales():
    pipeline = T.make_train_transforms(max_size=640)
    sizes = set()
    for seed in range(6):
        video, target = pipeline(_clip(), _target(), np.random.default_rng(seed))
        again, target2 = pipeline(_clip(), _target(), np.random.default_rng(seed))
        assert torch.equal(video, again) and torch.equal(target["boxes"], target2["boxes"])
        t, c, h, w = video.shape
        assert (t, c) == (2, 3) and video.dtype == torch.float32
        assert min(h, w) in T.TRAIN_SCALES and max(h, w) <= 640
        assert target["masks"].shape == (2, h, w) and target["size"].tolist() == [h, w]
        assert target["valid"].dtype == torch.int32
        boxes = target["boxes"]
        assert boxes.min() >= 0 and boxes.max() <= 1
        # valid frames have a positive box, invalid ones the zero box
        assert torch.equal(target["valid"].bool(), (boxes[:, 2] > 0) & (boxes[:, 3] > 0))
        assert (boxes[target["valid"] == 0] == 0).all()
        sizes.add((h, w))
    assert len(sizes) > 1


def test_eval_pipeline_short_side_and_normalisation():
    clip = [Image.new("RGB", (854, 480), (124, 116, 104))]
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 853.0, 479.0]]),
        "masks": torch.ones(1, 480, 854, dtype=torch.bool),
        "size": torch.tensor([480, 854]),
    }
    video, out = T.make_eval_transforms()(clip, target, np.random.default_rng(0))
    assert video.shape == (1, 3, 360, 640)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.tensor([124, 116, 104]).view(3, 1, 1) / 255.0 - mean) / std
    assert torch.allclose(video[0, :, 5, 5:6], expected[:, 0], atol=1e-6)
    assert torch.allclose(out["boxes"], torch.tensor([[853 / 2 / 854, 479 / 2 / 480, 853 / 854, 479 / 480]]), atol=1e-3)
    wide = [Image.new("RGB", (1280, 360))]
    video, _ = T.make_eval_transforms(max_size=None)(
        wide, {"size": torch.tensor([360, 1280])}, np.random.default_rng(0)
    )
    assert video.shape[-2:] == (360, 1280)
    video, _ = T.make_eval_transforms(max_size=640)(wide, {"size": torch.tensor([360, 1280])}, np.random.default_rng(0))
    assert video.shape[-2:] == (180, 640)


def test_random_size_crop_rejects_small_frames():
    with pytest.raises(ValueError, match="cannot crop"):
        T.RandomSizeCrop(384, 600)(_clip(), _target(), np.random.default_rng(0))


OFFICIAL_NORMALIZE = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.mark.parametrize("hw", [(45, 71), (67, 39), (33, 47), (360, 640), (241, 320)])
def test_eval_transforms_equal_the_official_pipelines_bit_for_bit(hw):
    """Ref-YTVOS/DAVIS scripts: torchvision Resize(360), ToTensor, Normalize on PIL frames; A2D/JHMDB
    loaders: resize to get_size_with_aspect_ratio(360, max 640) with torchvision's functional resize."""
    import torchvision.transforms as TV

    rng = np.random.default_rng(sum(hw))
    clip = [Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)) for _ in range(2)]
    target = {"size": torch.tensor(hw)}

    scripts = TV.Compose([TV.Resize(360), TV.ToTensor(), TV.Normalize(*OFFICIAL_NORMALIZE)])
    video, _ = T.make_eval_transforms(360, max_size=None)(clip, target, np.random.default_rng(0))
    assert torch.equal(video, torch.stack([scripts(im) for im in clip]))

    out_h, out_w = frame_sizes.resized_hw(*hw, 360, 640)
    loader = TV.Compose([TV.ToTensor(), TV.Normalize(*OFFICIAL_NORMALIZE)])
    video, _ = T.make_eval_transforms(360, max_size=640)(clip, target, np.random.default_rng(0))
    assert torch.equal(video, torch.stack([loader(TF.resize(im, [out_h, out_w])) for im in clip]))
