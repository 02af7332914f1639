"""`in_chunks`: the chunked result equals the whole one, along any dimension, and each chunk is
computed once."""

from __future__ import annotations

import pytest
import torch

from bifit.modeling.chunks import chunk_size, in_chunks


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


def test_chunk_size_takes_everything_under_autograd_and_the_budget_without_or_when_recomputed():
    assert chunk_size(6, 100, 30) == 6  # autograd on (the default)
    assert chunk_size(6, 100, 30, recompute=True) == 3
    with torch.no_grad():
        assert chunk_size(6, 100, 30) == 3
        assert chunk_size(6, 10, 30) == 1  # never less than one item
        assert chunk_size(6, 1000, 30) == 33  # more than there are: one chunk


def test_chunks_of_a_differentiable_function_pass_gradients_to_every_chunk():
    x = torch.randn(5, 3, requires_grad=True)
    in_chunks(lambda part: x[part] * torch.arange(1.0, 4.0), 5, 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(1.0, 4.0).expand(5, 3), rtol=0, atol=0)
