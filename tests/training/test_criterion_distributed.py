"""The loss normaliser under torch.distributed: all-reduced, divided by the world size, >= 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bifit.training import num_valid_frames


def test_normaliser_with_a_real_single_rank_process_group(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        assert num_valid_frames(torch.tensor([[1, 0, 1], [1, 1, 1]])) == 5.0
        assert num_valid_frames(torch.zeros(1, 2, dtype=torch.int64)) == 1.0
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("local", "other_rank", "expected"), [(3, 1, 2.0), (0, 1, 1.0), (0, 0, 1.0)])
def test_normaliser_is_summed_over_ranks_then_divided_by_world_size(
    monkeypatch: pytest.MonkeyPatch, local: int, other_rank: int, expected: float
) -> None:
    # A two-rank run simulated in-process (spawning ranks costs tens of seconds on a small machine):
    # the all-reduce adds the other rank's count.
    reduced = []

    def all_reduce(tensor: torch.Tensor) -> None:
        reduced.append(tensor.clone())
        tensor.add_(other_rank)

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    valid = torch.zeros(2, 3, dtype=torch.int64)
    valid.view(-1)[:local] = 1
    assert num_valid_frames(valid) == expected
    assert len(reduced) == 1 and reduced[0].dtype == torch.float32 and reduced[0].item() == local
