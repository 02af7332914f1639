"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Runs on CPU and GPU without compiled extensions. The sampling core is a plain function,
`multi_scale_deformable_attention`; the module takes any callable with the same signature through
its `kernel` argument, which is where a fused or compiled implementation can plug in.

Conventions (shared with the official CUDA kernel):

- Sampling locations are normalised to [0, 1] per level, (x, y) order, with (0, 0) the top-left
  corner of the map and (1, 1) the bottom-right corner; pixel (i, j) has its centre at
  ((j + 0.5) / W, (i + 0.5) / H) (the ``align_corners=False`` convention).
- Sampling is bilinear; neighbours outside the map contribute zero.
- Feature maps of all levels are flattened row-major and concatenated along one axis, level 0 first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SpatialShapes = Tensor | Sequence[tuple[int, int]] | Sequence[Sequence[int]]
"""Per-level (H, W): a LongTensor [L, 2] or a sequence of pairs of python ints."""

DeformableAttentionKernel = Callable[[Tensor, SpatialShapes, Tensor, Tensor], Tensor]
"""Signature of a sampling kernel: (value, spatial_shapes, sampling_locations, attention_weights) -> output."""


def as_shape_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """Per-level (H, W) as python ints.

    A tensor is read back to the host once (a device sync on GPU); callers that run many attention
    layers over the same maps can convert once with this function and pass the list around.
    """
    if isinstance(spatial_shapes, Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes must have shape [L, 2], got {tuple(spatial_shapes.shape)}")
        spatial_shapes = spatial_shapes.tolist()
    shapes = []
    for level, shape in enumerate(spatial_shapes):
        if len(shape) != 2:
            raise ValueError(f"spatial_shapes[{level}] must be a pair (H, W), got {shape!r}")
        height, width = int(shape[0]), int(shape[1])
        if height <= 0 or width <= 0:
            raise ValueError(f"spatial_shapes[{level}] must be positive, got {(height, width)}")
        shapes.append((height, width))
    if not shapes:
        raise ValueError("spatial_shapes must describe at least one level")
    return shapes


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Weighted sum of bilinear samples taken from several feature maps.

    Args:
        value: [N, S, M, D] per-head values of all levels, S = sum_l H_l * W_l.
        spatial_shapes: per-level (H, W), LongTensor [L, 2] or a list of pairs (a list avoids a
            device sync on GPU).
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) in [0, 1] per level; locations outside
            the map are allowed and sample zeros there.
        attention_weights: [N, Lq, M, L, P], applied as given (no normalisation here).

    Returns:
        [N, Lq, M * D], heads concatenated in order.
    """
    shapes = as_shape_list(spatial_shapes)
    if value.dim() != 4:
        raise ValueError(f"value must have shape [N, S, M, D], got {tuple(value.shape)}")
    batch, total, heads, head_dim = value.shape
    if sum(h * w for h, w in shapes) != total:
        raise ValueError(f"spatial_shapes {shapes} cover {sum(h * w for h, w in shapes)} positions, value has {total}")
    if (
        sampling_locations.dim() != 6
        or sampling_locations.shape[-1] != 2
        or sampling_locations.shape[0] != batch
        or sampling_locations.shape[2] != heads
        or sampling_locations.shape[3] != len(shapes)
    ):
        raise ValueError(
            f"sampling_locations must have shape [N={batch}, Lq, M={heads}, L={len(shapes)}, P, 2], "
            f"got {tuple(sampling_locations.shape)}"
        )
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(
            f"attention_weights must have shape {tuple(sampling_locations.shape[:-1])}, "
            f"got {tuple(attention_weights.shape)}"
        )
    num_queries, num_points = sampling_locations.shape[1], sampling_locations.shape[4]

    # grid_sample works on [batch, channels, H, W] maps, so heads fold into the batch axis.
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    value_maps = [
        level.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        for level, (height, width) in zip(value_levels, shapes)
    ]
    # Every query's output depends on its own locations and weights only, so the queries run in
    # chunks: the [N*M, D, chunk, P] samples of one level stay within _SAMPLES_PER_CHUNK floats (at
    # 6 x 360 x 640 the encoder's unchunked samples take 118 MB per level, the largest tensor of the
    # forward pass). The results are bit-identical to one chunk.
    chunk = max(1, _SAMPLES_PER_CHUNK // (batch * heads * head_dim * num_points))
    outputs = [
        _sample_and_weigh(value_maps, shapes, sampling_locations[:, start : start + chunk],
                          attention_weights[:, start : start + chunk])
        for start in range(0, num_queries, chunk)
    ]
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    # [N * M, D, Lq] -> [N, Lq, M * D]
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()


# About 32 MB of float32 samples per level and chunk of queries.
_SAMPLES_PER_CHUNK = 1 << 23


def _sample_and_weigh(
    value_maps: list[Tensor], shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """[N * M, D, Lq]: the weighted bilinear samples of `multi_scale_deformable_attention` for the
    queries of `sampling_locations` [N, Lq, M, L, P, 2] and `attention_weights` [N, Lq, M, L, P]."""
    batch, num_queries, heads, levels, num_points, _ = sampling_locations.shape
    # [N, Lq, M, L, P, 2] -> [N, M, L, Lq, P, 2]; grid_sample wants coordinates in [-1, 1].
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 1, 4, 5)
    # [N, Lq, M, L, P] -> [N * M, L, 1, Lq, P], broadcast over the D channels of each sample.
    weights = attention_weights.permute(0, 2, 3, 1, 4).reshape(batch * heads, levels, 1, num_queries, num_points)
    output = None
    for level in range(len(shapes)):
        grid = grids[:, :, level].reshape(batch * heads, num_queries, num_points, 2)
        sampled = F.grid_sample(value_maps[level], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # Accumulating level by level keeps only one level's [N*M, D, Lq, P] samples alive at a time
        # (beyond what autograd saves) instead of stacking all levels.
        contribution = (sampled * weights[:, level]).sum(-1)
        output = contribution if output is None else output + contribution
    assert output is not None  # shapes is non-empty
    return output


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention: each query attends to a few learned points per level.

    Parameter names (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`) and
    their initialisation follow the official Deformable DETR module, so official checkpoints load
    unchanged.

    Args:
        d_model: channel width C of queries, inputs and output.
        n_levels: number of feature levels L.
        n_heads: number of attention heads M; must divide `d_model`.
        n_points: sampling points P per head and level.
        kernel: sampling core with the signature of `multi_scale_deformable_attention`
            (value [N, S, M, D], spatial shapes, locations [N, Lq, M, L, P, 2], weights
            [N, Lq, M, L, P]) -> [N, Lq, M * D]. Defaults to that pure-PyTorch function.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_levels: int = 4,
        n_heads: int = 8,
        n_points: int = 4,
        kernel: DeformableAttentionKernel | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.kernel: DeformableAttentionKernel = kernel if kernel is not None else multi_scale_deformable_attention

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation.

        Offsets start from a fixed pattern that does not depend on the query: head m points in
        direction angle 2*pi*m/M, scaled so the larger of |x|, |y| is 1, and point p lies (p + 1)
        steps along it, the same on every level. Attention starts uniform.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        # [M, 1, 1, 2] * [1, 1, P, 1] -> [M, L, P, 2]
        grid = (directions[:, None, None, :] * steps[None, None, :, None]).expand(-1, self.n_levels, -1, -1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling_locations_and_weights(
        self, query: Tensor, reference_points: Tensor, spatial_shapes: SpatialShapes
    ) -> tuple[Tensor, Tensor]:
        """Where each query samples and with which weights.

        Args:
            query: [N, Lq, C].
            reference_points: [N, Lq, L, 2] points (x, y) or [N, Lq, L, 4] boxes (cx, cy, w, h),
                normalised to [0, 1] per level.
            spatial_shapes: per-level (H, W), LongTensor [L, 2] or a list of pairs.

        Returns:
            sampling_locations [N, Lq, M, L, P, 2] and attention_weights [N, Lq, M, L, P]
            (softmax over the L * P points of each head).
        """
        batch, num_queries, _ = query.shape
        if reference_points.dim() != 4 or reference_points.shape[:3] != (batch, num_queries, self.n_levels):
            raise ValueError(
                f"reference_points must have shape [N={batch}, Lq={num_queries}, L={self.n_levels}, 2 or 4], "
                f"got {tuple(reference_points.shape)}"
            )
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        # At least float32 under autocast (fast mode): a bfloat16 offset of 40 px is off by 0.1 px.
        with torch.autocast(query.device.type, enabled=False):
            full = torch.promote_types(query.dtype, torch.float32)
            offsets = F.linear(query.to(full), self.sampling_offsets.weight.to(full), self.sampling_offsets.bias.to(full))
        offsets = offsets.view(batch, num_queries, heads, levels, points, 2)
        logits = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = F.softmax(logits, -1).view(batch, num_queries, heads, levels, points)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level.
            if isinstance(spatial_shapes, Tensor):
                normalizer = spatial_shapes.flip(-1).to(device=query.device)
            else:
                normalizer = torch.tensor([[w, h] for h, w in as_shape_list(spatial_shapes)], device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # Offsets are in units of half the box size, divided among the points.
            centre = reference_points[:, :, None, :, None, :2]
            size = reference_points[:, :, None, :, None, 2:]
            locations = centre + offsets / points * size * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 (points) or 4 (boxes), got {reference_points.shape[-1]}")
        return locations, weights

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Tensor | None = None,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from queries to the flattened multi-level input.

        Args:
            query: [N, Lq, C] queries (with their position embedding added).
            reference_points: [N, Lq, L, 2] or [N, Lq, L, 4], see `sampling_locations_and_weights`.
            input_flatten: [N, S, C] all levels flattened row-major and concatenated, S = sum H_l * W_l.
            spatial_shapes: per-level (H, W), LongTensor [L, 2] or a list of pairs (a list avoids a
                device sync on GPU).
            level_start_index: [L] offset of each level in S. Accepted for call compatibility with
                the official module; the offsets follow from `spatial_shapes`, so it is not read.
            padding_mask: [N, S] bool, True at padding; padded positions contribute zero.

        Returns:
            [N, Lq, C].
        """
        batch, total, channels = input_flatten.shape
        if channels != self.d_model or query.dim() != 3 or query.shape[0] != batch or query.shape[2] != channels:
            raise ValueError(
                f"query [N, Lq, {self.d_model}] and input_flatten [N, S, {self.d_model}] expected, "
                f"got {tuple(query.shape)} and {tuple(input_flatten.shape)}"
            )
        if padding_mask is not None and padding_mask.shape != (batch, total):
            raise ValueError(f"padding_mask must have shape {(batch, total)}, got {tuple(padding_mask.shape)}")
        shapes = spatial_shapes if isinstance(spatial_shapes, Tensor) else as_shape_list(spatial_shapes)
        if len(shapes) != self.n_levels:
            raise ValueError(f"expected {self.n_levels} levels in spatial_shapes, got {len(shapes)}")

        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(batch, total, self.n_heads, self.d_model // self.n_heads)
        locations, weights = self.sampling_locations_and_weights(query, reference_points, shapes)
        return self.output_proj(self.kernel(value, shapes, locations, weights))
