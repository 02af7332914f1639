"""`in_chunks`: the chunked result equals the whole one, along any dimension, and each chunk is
computed once."""

from __future__ import annotations

import pytest
import torch

from bifit.modeling.chunks import in_chunks, inference_chunk


@pytest.mark.parametrize("dim,chunk", [(0, 1), (0, 3), (1, 2), (1, 4)])
def test_chunks_join_to_the_whole_result(dim, chunk):
    x = torch.randn(4, 7, 5)
    calls = []

    def fn(part: slice) -> torch.Tensor:
        piece = x[part] if dim == 0 else x[:, part]
        calls.append(piece.shape[dim])
        return piece.square() + 1

    total = x.shape[dim]
    out = in_chunks(fn, total, chunk, dim=dim)
    assert torch.equal(out, x.square() + 1)
    assert calls == [min(chunk, total - s) for s in range(0, total, chunk)]


def test_one_call_with_the_whole_slice_when_the_chunk_covers_everything():
    seen = []
    out = in_chunks(lambda part: (seen.append(part), torch.arange(6)[part])[1], 6, 6)
    assert seen == [slice(None)] and torch.equal(out, torch.arange(6))


def test_a_channels_last_result_stays_channels_last():
    x = torch.randn(5, 3, 4, 6).contiguous(memory_format=torch.channels_last)
    out = in_chunks(lambda part: x[part] * 2, 5, 2)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, x * 2)


def test_inference_chunk_takes_everything_under_autograd_and_the_budget_without():
    assert inference_chunk(6, 100, 30) == 6  # autograd on (the default)
    with torch.no_grad():
        assert inference_chunk(6, 100, 30) == 3
        assert inference_chunk(6, 10, 30) == 1  # never less than one item
        assert inference_chunk(6, 1000, 30) == 33  # more than there are: one chunk
