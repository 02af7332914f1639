"""Training targets: the official Ref-YouTube-VOS box rules and the target format."""

import numpy as np
import pytest
import torch

from bifit.data.targets import boxes_from_masks, build_target, check_boxes, normalize_boxes


def _masks(num_frames: int = 3, height: int = 10, width: int = 20) -> np.ndarray:
    return np.zeros((num_frames, height, width), dtype=bool)


def test_box_is_inclusive_pixel_bounds():
    masks = _masks()
    masks[0, 2:6, 3:10] = True  # rows 2..5, columns 3..9
    masks[1, 7, 4] = True
    masks[1, 0, 18] = True  # scattered pixels: bounds of all of them
    boxes, valid = boxes_from_masks(masks)
    assert boxes.dtype == torch.float32 and valid.dtype == torch.int32
    assert boxes[0].tolist() == [3.0, 2.0, 9.0, 5.0]  # x2 is the last column, no +1
    assert boxes[1].tolist() == [4.0, 0.0, 18.0, 7.0]
    assert valid[:2].tolist() == [1, 1]


def test_absent_frame_gets_zero_box_and_is_invalid():
    masks = _masks()
    masks[0, 2:6, 3:10] = True
    boxes, valid = boxes_from_masks(masks)
    assert valid.tolist() == [1, 0, 0]
    assert torch.count_nonzero(boxes[1:]) == 0


@pytest.mark.parametrize(
    "region",
    [
        (slice(2, 8), slice(5, 6)),  # one pixel wide
        (slice(4, 5), slice(1, 15)),  # one pixel tall
        (slice(4, 5), slice(7, 8)),  # a single pixel
    ],
)
def test_degenerate_object_is_invalid_but_keeps_its_mask(region):
    masks = _masks()
    masks[0][region] = True
    masks[1, 1:4, 1:4] = True
    boxes, valid = boxes_from_masks(masks)
    assert valid.tolist() == [0, 1, 0]
    assert torch.count_nonzero(boxes[0]) == 0
    target = build_target(masks, "thin thing")
    assert target["valid"].tolist() == [0, 1, 0]
    assert torch.count_nonzero(target["boxes"][0]) == 0
    assert torch.equal(target["masks"], torch.from_numpy(masks))
    assert target["masks"][0].sum() == masks[0].sum() > 0


def test_tensor_and_array_masks_agree_and_numeric_masks_count_nonzero():
    rng = np.random.default_rng(0)
    masks = (rng.random((4, 9, 11)) > 0.9).astype(np.float32)
    boxes_a, valid_a = boxes_from_masks(masks)
    boxes_t, valid_t = boxes_from_masks(torch.from_numpy(masks))
    boxes_b, valid_b = boxes_from_masks(masks > 0)
    assert torch.equal(boxes_a, boxes_t) and torch.equal(boxes_a, boxes_b)
    assert torch.equal(valid_a, valid_t) and torch.equal(valid_a, valid_b)


def test_check_boxes_needs_strictly_positive_extent():
    boxes = torch.tensor([[1.0, 2.0, 5.0, 6.0], [3.0, 1.0, 3.0, 4.0], [3.0, 4.0, 5.0, 4.0], [5.0, 5.0, 2.0, 9.0]])
    checked, valid = check_boxes(boxes)
    assert valid.tolist() == [1, 0, 0, 0]
    assert checked.tolist() == [[1.0, 2.0, 5.0, 6.0], [0.0] * 4, [0.0] * 4, [0.0] * 4]
    assert boxes[1].tolist() == [3.0, 1.0, 3.0, 4.0]  # the input is left alone


def test_normalize_boxes_to_cxcywh_by_width_and_height():
    boxes = torch.tensor([[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0]])
    out = normalize_boxes(boxes, (10, 20))
    expected = torch.tensor([[6.0 / 20, 3.5 / 10, 6.0 / 20, 3.0 / 10], [0.0, 0.0, 0.0, 0.0]])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_build_target_has_the_official_fields():
    masks = _masks(num_frames=4, height=6, width=8)
    masks[0, 1:3, 2:5] = True
    masks[2, 4:6, 0:8] = True
    target = build_target(masks, "  The Red\tCircle  moving LEFT ")
    assert set(target) == {"frames_idx", "labels", "boxes", "masks", "valid", "caption", "orig_size", "size"}
    assert target["caption"] == "the red circle moving left"
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [0, 0, 0, 0]
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (4, 4)
    assert target["masks"].dtype == torch.bool and target["masks"].shape == (4, 6, 8)
    assert target["valid"].dtype == torch.int32 and target["valid"].tolist() == [1, 0, 1, 0]
    assert target["size"].dtype == torch.int64 and target["size"].tolist() == [6, 8]
    assert target["orig_size"].dtype == torch.int64 and target["orig_size"].tolist() == [6, 8]
    assert target["frames_idx"].dtype == torch.int64 and target["frames_idx"].tolist() == [0, 1, 2, 3]
    # frame 0: x 2..4, y 1..2 -> cx 3/8, cy 1.5/6, w 2/8, h 1/6
    torch.testing.assert_close(target["boxes"][0], torch.tensor([3 / 8, 1.5 / 6, 2 / 8, 1 / 6]), rtol=0, atol=1e-7)
    torch.testing.assert_close(target["boxes"][2], torch.tensor([3.5 / 8, 4.5 / 6, 7 / 8, 1 / 6]), rtol=0, atol=1e-7)


def test_build_target_takes_frame_indices_and_original_size():
    target = build_target(_masks(num_frames=2), "x", frames_idx=[4, 9], orig_size=(720, 1280))
    assert target["frames_idx"].tolist() == [4, 9] and target["frames_idx"].dtype == torch.int64
    assert target["orig_size"].tolist() == [720, 1280] and target["size"].tolist() == [10, 20]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        boxes_from_masks(np.zeros((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="frames_idx"):
        build_target(_masks(num_frames=3), "x", frames_idx=[0, 1])
    with pytest.raises(ValueError, match="size"):
        normalize_boxes(torch.zeros(1, 4), (0, 5))
    with pytest.raises(ValueError, match=r"\[T, 4\]"):
        check_boxes(torch.zeros(3))
