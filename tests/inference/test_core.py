"""The clip core: preprocessing, query selection and postprocessing shared by every inference path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bifit.inference.core import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    QueryVote,
    boxes_to_pixels,
    check_count,
    masks_from_logits,
    normalize_frames,
    preprocess_frames,
    select_queries,
)


def test_normalize_frames_is_imagenet_normalisation_channels_first():
    frames = np.zeros((2, 3, 4, 3), dtype=np.uint8)
    frames[1, 2, 3] = (255, 128, 0)
    video = normalize_frames(frames)
    assert video.shape == (2, 3, 3, 4) and video.dtype == torch.float32
    expected = [(v / 255.0 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(video[1, :, 2, 3], torch.tensor(expected), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        video[0, :, 0, 0], torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(normalize_frames(torch.from_numpy(frames)), video, rtol=0, atol=0)


def test_normalize_frames_refuses_frames_that_are_not_uint8():
    with pytest.raises(ValueError, match="uint8"):
        normalize_frames(np.zeros((1, 4, 4, 3), dtype=np.float32))


def test_normalize_frames_equals_torchvision_to_tensor_then_normalize_bit_for_bit():
    """The official transforms (ToTensor, then Normalize) on every byte value of every channel."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    values = np.arange(256, dtype=np.uint8)
    # Each channel runs through all 256 values, in a different order per channel.
    image = np.stack([values, values[::-1], np.roll(values, 85)], axis=-1).reshape(16, 16, 3)
    official = TF.normalize(TF.to_tensor(Image.fromarray(image)), list(IMAGENET_MEAN), list(IMAGENET_STD))
    ours = normalize_frames(image[None])[0]
    assert torch.equal(ours, official)


def test_preprocess_frames_resizes_the_shorter_side_with_pil_bilinear_then_normalises():
    from PIL import Image

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 30, 50, 3), dtype=np.uint8)
    video = preprocess_frames(frames, short_side=12)
    # Resize(12) of a 50x30 frame: 20x12 (the longer side truncated, not rounded).
    assert video.shape == (2, 3, 12, 20)
    resized = np.stack([np.asarray(Image.fromarray(f).resize((20, 12), Image.Resampling.BILINEAR)) for f in frames])
    assert torch.equal(video, normalize_frames(resized))
    assert torch.equal(preprocess_frames(frames, short_side=None), normalize_frames(frames))


def test_check_count_takes_none_or_a_positive_count_and_names_what_it_refuses():
    assert check_count(None, "clip_length") is None and check_count(3, "clip_length") == 3
    with pytest.raises(ValueError, match="--clip-length must be >= 1, got 0"):
        check_count(0, "--clip-length")
    with pytest.raises(ValueError, match="expressions_per_pass must be >= 1, got -1"):
        check_count(-1, "expressions_per_pass")


def test_the_video_rule_over_one_clip_is_the_clip_rule():
    logits = torch.randn(3, 5, 4, 2, generator=torch.Generator().manual_seed(0))
    vote = QueryVote()
    vote.add(logits)
    assert torch.equal(vote.select(), select_queries(logits))
    torch.testing.assert_close(vote.scores(), logits.sigmoid().mean(1).max(-1).values)


def test_the_video_rule_takes_the_mean_over_all_frames_of_all_clips():
    # Query 1 wins the first (long) clip, query 0 the second (short) one; over all frames query 1 wins.
    first = torch.full((1, 4, 2, 1), -4.0)
    first[..., 1, 0] = 0.0
    second = torch.full((1, 1, 2, 1), -4.0)
    second[..., 0, 0] = 4.0
    vote = QueryVote()
    vote.add(first)
    vote.add(second)
    assert vote.num_frames == 5
    assert select_queries(first).tolist() == [1] and select_queries(second).tolist() == [0]
    assert vote.select().tolist() == [1]
    with pytest.raises(ValueError, match="no clip"):
        QueryVote().select()


def test_masks_from_logits_upsample_bilinearly_then_threshold():
    logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    expected = F.interpolate(logits, size=(13, 17), mode="bilinear", align_corners=False).sigmoid() > 0.5
    assert torch.equal(masks_from_logits(logits, (13, 17)), expected)
    one = F.interpolate(logits[:1], size=(13, 17), mode="bilinear", align_corners=False)[0]
    assert torch.equal(masks_from_logits(logits[0], (13, 17), 0.7), one.sigmoid() > 0.7)


def test_boxes_to_pixels_turns_normalised_centre_boxes_into_corners():
    boxes = np.array([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.1, 0.2]], dtype=np.float32)
    pixels = boxes_to_pixels(boxes, (100, 200))
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, [[0, 0, 200, 100], [40, 65, 60, 85]], atol=1e-4)
