"""Batch collation: videos keep their own sizes; captions and targets are regrouped."""

import pytest
import torch
from torch.utils.data import DataLoader

from bifit.data.collate import collate_expressions, collate_fn
from bifit.data.synthetic import SyntheticRVOS


def _item(num_frames: int, height: int, width: int, caption: str):
    video = torch.randn(num_frames, 3, height, width)
    return video, {"caption": caption, "masks": torch.zeros(num_frames, height, width, dtype=torch.bool)}


def test_collate_keeps_each_video_and_batch_order():
    batch = [_item(2, 8, 12, "the red circle"), _item(2, 16, 10, "the square at the top")]
    videos, captions, targets = collate_fn(batch)
    assert isinstance(videos, list) and isinstance(captions, list) and isinstance(targets, list)
    assert [v.shape for v in videos] == [(2, 3, 8, 12), (2, 3, 16, 10)]
    assert videos[0] is batch[0][0] and videos[1] is batch[1][0]  # no copy, no padding
    assert captions == ["the red circle", "the square at the top"]
    assert targets[0] is batch[0][1] and targets[1] is batch[1][1]


def test_collate_with_a_dataloader_over_synthetic_items():
    dataset = SyntheticRVOS(4, num_frames=2, size=(48, 64), seed=3)
    loader = DataLoader(dataset, batch_size=3, collate_fn=collate_fn)
    videos, captions, targets = next(iter(loader))
    assert len(videos) == len(captions) == len(targets) == 3
    for index in range(3):
        video, target = dataset[index]
        assert torch.equal(videos[index], video)
        assert captions[index] == target["caption"] == targets[index]["caption"]
        assert torch.equal(targets[index]["masks"], target["masks"])


def test_collate_rejects_malformed_batches():
    with pytest.raises(ValueError, match="empty"):
        collate_fn([])
    with pytest.raises(ValueError, match="caption"):
        collate_fn([(torch.zeros(1, 3, 4, 4), {})])
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        collate_fn([(torch.zeros(3, 4, 4), {"caption": "x"})])
    with pytest.raises(ValueError, match="pair"):
        collate_fn([(torch.zeros(1, 3, 4, 4),)])


def test_items_with_several_expressions_keep_their_video_once():
    first = _item(2, 8, 12, "the red circle")
    second = _item(2, 8, 12, "the square")
    third = _item(2, 16, 10, "the blue diamond")
    batch = [(first[0], [first[1], second[1]]), third]
    videos, captions, targets, caption_videos = collate_expressions(batch)
    assert len(videos) == 2 and videos[0] is first[0] and videos[1] is third[0]
    assert captions == ["the red circle", "the square", "the blue diamond"]
    assert targets[1] is second[1] and targets[2] is third[1]
    assert caption_videos == [0, 0, 1]
    with pytest.raises(ValueError, match="collate_expressions"):
        collate_fn(batch)
    with pytest.raises(ValueError, match="no target"):
        collate_expressions([(first[0], [])])
