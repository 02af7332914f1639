"""Running a computation a few frames at a time and joining the results: the memory of inference (and of
a recomputed training forward) is then sized by a chunk of frames instead of the clip."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["chunk_size", "in_chunks"]


def chunk_size(total: int, budget: int, per_item: int, recompute: bool = False) -> int:
    """Items per chunk for `in_chunks`: all `total` while autograd records and keeps every chunk's
    tensors for the backward (chunks would then save nothing); else (no autograd, or `recompute`: each
    chunk is checkpointed and computed again in the backward) as many items of `per_item` elements as
    `budget` allows, at least one."""
    if torch.is_grad_enabled() and not recompute:
        return total
    return max(1, budget // per_item)


def in_chunks(fn: Callable[[slice], torch.Tensor], total: int, chunk: int, dim: int = 0) -> torch.Tensor:
    """`fn(slice(None))` computed as `fn(slice(i, i + chunk))` for i = 0, chunk, ... < `total`, the
    results joined along `dim` into one tensor allocated once (no second copy of the whole result), in
    the memory layout of the first chunk's result (channels-last stays channels-last).

    `fn` must map a slice of the `total` items to their results along `dim`; with `chunk >= total`
    it is called once with `slice(None)`.
    """
    if chunk >= total:
        return fn(slice(None))
    first = fn(slice(0, chunk))
    shape = list(first.shape)
    shape[dim] = total
    out = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=_layout(first))
    out.narrow(dim, 0, first.shape[dim]).copy_(first)
    del first
    for start in range(chunk, total, chunk):
        part = fn(slice(start, start + chunk))
        out.narrow(dim, start, part.shape[dim]).copy_(part)
    return out


def _layout(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
