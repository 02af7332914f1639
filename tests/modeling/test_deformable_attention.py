"""Multi-scale deformable attention against an explicit bilinear-sampling loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bifit.modeling.deformable_attention import (
    MultiScaleDeformableAttention,
    as_shape_list,
    multi_scale_deformable_attention,
)

SHAPES = [(3, 4), (2, 3)]


def reference_attention(value, spatial_shapes, sampling_locations, attention_weights):
    """Plain loop: bilinear sample per (n, q, head, level, point), zeros outside the map.

    Pixel (i, j) of a level with size (H, W) has its centre at ((j + 0.5) / W, (i + 0.5) / H).
    Built from differentiable scalar tensor operations so autograd gives reference gradients.
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, levels, points, _ = sampling_locations.shape
    starts = [0]
    for h, w in spatial_shapes[:-1]:
        starts.append(starts[-1] + h * w)
    rows = []
    for n in range(batch):
        for q in range(num_queries):
            heads_out = []
            for m in range(heads):
                acc = value.new_zeros(head_dim)
                for lvl, (h, w) in enumerate(spatial_shapes):
                    for p in range(points):
                        x = sampling_locations[n, q, m, lvl, p, 0] * w - 0.5
                        y = sampling_locations[n, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = math.floor(x.item()), math.floor(y.item())
                        fx, fy = x - x0, y - y0
                        sample = value.new_zeros(head_dim)
                        for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
                            for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample = sample + wy * wx * value[n, starts[lvl] + yy * w + xx, m]
                        acc = acc + attention_weights[n, q, m, lvl, p] * sample
                heads_out.append(acc)
            rows.append(torch.cat(heads_out))
    return torch.stack(rows).view(batch, num_queries, heads * head_dim)


def random_inputs(seed=0, batch=2, num_queries=3, heads=2, head_dim=3, points=2, low=-0.2, high=1.2):
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, head_dim, generator=gen, dtype=torch.float64)
    locations = low + (high - low) * torch.rand(
        batch, num_queries, heads, len(SHAPES), points, 2, generator=gen, dtype=torch.float64
    )
    weights = torch.rand(batch, num_queries, heads, len(SHAPES), points, generator=gen, dtype=torch.float64)
    return value, locations, weights


def test_values_match_reference_loop():
    value, locations, weights = random_inputs()
    out = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert out.shape == (2, 3, 2 * 3)
    torch.testing.assert_close(out, reference_attention(value, SHAPES, locations, weights), rtol=0, atol=1e-12)


def test_spatial_shapes_as_tensor_or_list_agree():
    value, locations, weights = random_inputs(seed=1)
    out_list = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    out_tensor = multi_scale_deformable_attention(value, torch.tensor(SHAPES), locations, weights)
    torch.testing.assert_close(out_list, out_tensor, rtol=0, atol=0)


def test_gradients_match_reference_loop():
    inputs = [t.requires_grad_() for t in random_inputs(seed=2)]
    grad_out = torch.randn(2, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = torch.autograd.grad(
        (multi_scale_deformable_attention(inputs[0], SHAPES, *inputs[1:]) * grad_out).sum(), inputs
    )
    ref = torch.autograd.grad((reference_attention(inputs[0], SHAPES, *inputs[1:]) * grad_out).sum(), inputs)
    for name, g_ours, g_ref in zip(("value", "locations", "weights"), ours, ref, strict=True):
        assert g_ref.abs().sum() > 0, name
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-10, msg=name)


def test_gradcheck():
    value, locations, weights = random_inputs(seed=4, batch=1, num_queries=2, heads=2, head_dim=2, points=2)
    # Random locations fall on the kinks of bilinear interpolation (pixel-centre lines) with
    # probability zero, so finite differences are valid.
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention(v, SHAPES, loc, w),
        (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_()),
        eps=1e-6,
        atol=1e-5,
    )


def test_borders_and_outside():
    # One level 2x2 with values 1, 2 / 3, 4; one head, one channel, one point per query.
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    xy = [
        (0.25, 0.25),  # centre of pixel (0, 0): exactly its value
        (0.75, 0.75),  # centre of pixel (1, 1)
        (0.5, 0.5),  # between all four centres: mean
        (0.0, 0.0),  # top-left corner: a quarter of pixel (0, 0), the rest is outside
        (1.0, 1.0),  # bottom-right corner
        (0.0, 0.25),  # left border on the first row: half of pixel (0, 0)
        (1.0, 0.75),  # right border on the second row: half of pixel (1, 1)
        (-0.25, 0.25),  # one pixel left of the map: the nearest sampled centre is outside
        (0.5, 1.5),  # far below the map
        (-3.0, -3.0),  # far outside
    ]
    expected = torch.tensor([1.0, 4.0, 2.5, 0.25, 1.0, 0.5, 2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    locations = torch.tensor(xy, dtype=torch.float64).view(1, len(xy), 1, 1, 1, 2)
    weights = torch.ones(1, len(xy), 1, 1, 1, dtype=torch.float64)
    out = multi_scale_deformable_attention(value, [(2, 2)], locations, weights)
    torch.testing.assert_close(out.view(-1), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, reference_attention(value, [(2, 2)], locations, weights), rtol=0, atol=1e-12)


def test_outside_locations_give_zero_output_and_gradient():
    value, locations, weights = random_inputs(seed=5)
    value.requires_grad_()
    outside = locations.clone()
    outside[..., 0] = torch.where(outside[..., 0] > 0.5, outside[..., 0] + 2.0, outside[..., 0] - 2.0)
    out = multi_scale_deformable_attention(value, SHAPES, outside, weights)
    assert torch.equal(out, torch.zeros_like(out))
    (grad,) = torch.autograd.grad(out.sum(), value)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_bad_inputs_raise_value_error():
    value, locations, weights = random_inputs()
    with pytest.raises(ValueError, match="cover"):
        multi_scale_deformable_attention(value, [(3, 4), (2, 2)], locations, weights)
    with pytest.raises(ValueError, match="sampling_locations"):
        multi_scale_deformable_attention(value, SHAPES, locations[..., :1], weights)
    with pytest.raises(ValueError, match="attention_weights"):
        multi_scale_deformable_attention(value, SHAPES, locations, weights[..., :1])
    with pytest.raises(ValueError, match=r"\[L, 2\]"):
        as_shape_list(torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleDeformableAttention(d_model=10, n_heads=4)


def make_module(**kwargs):
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(d_model=8, n_levels=2, n_heads=2, n_points=2, **kwargs).double()
    # Non-zero offset and attention weights so that queries steer the sampling.
    with torch.no_grad():
        module.sampling_offsets.weight.normal_(0.0, 0.5)
        module.attention_weights.weight.normal_(0.0, 0.5)
    return module


def module_inputs(seed=6, ref_dim=2):
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    source = torch.randn(2, total, 8, generator=gen, dtype=torch.float64)
    refs = torch.rand(2, 3, len(SHAPES), ref_dim, generator=gen, dtype=torch.float64)
    if ref_dim == 4:
        refs[..., 2:] = 0.2 + 0.5 * refs[..., 2:]
    return query, refs, source


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_matches_reference_loop(ref_dim):
    module = make_module()
    query, refs, source = module_inputs(ref_dim=ref_dim)
    out = module(query, refs, source, torch.tensor(SHAPES))

    heads, levels, points = 2, 2, 2
    offsets = module.sampling_offsets(query).view(2, 3, heads, levels, points, 2)
    if ref_dim == 2:
        # Offsets in pixels of each level: divide x by W and y by H.
        scale = torch.tensor([[1 / w, 1 / h] for h, w in SHAPES], dtype=torch.float64).view(1, 1, 1, levels, 1, 2)
        locations = refs[:, :, None, :, None, :] + offsets * scale
    else:
        # Offsets in half box sizes, divided among the points.
        locations = refs[:, :, None, :, None, :2] + offsets * refs[:, :, None, :, None, 2:] / (2 * points)
    weights = F.softmax(module.attention_weights(query).view(2, 3, heads, levels * points), -1)
    value = module.value_proj(source).view(2, -1, heads, 4)
    expected = module.output_proj(
        reference_attention(value, SHAPES, locations, weights.view(2, 3, heads, levels, points))
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_four_dim_reference_offsets_scale_with_box():
    # One head, one level, two points; bias offsets (1, 0) and (0, -2) with zero weights.
    captured = {}

    def recording_kernel(value, spatial_shapes, sampling_locations, attention_weights):
        captured["locations"] = sampling_locations
        captured["weights"] = attention_weights
        return multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights)

    module = MultiScaleDeformableAttention(d_model=4, n_levels=1, n_heads=1, n_points=2, kernel=recording_kernel)
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 0.0, -2.0]))
    box = torch.tensor([0.5, 0.4, 0.2, 0.6]).view(1, 1, 1, 4)  # cx, cy, w, h
    module(torch.randn(1, 1, 4), box, torch.randn(1, 12, 4), [(3, 4)])
    # Offset / n_points * (w, h) / 2: (1, 0) -> +0.05 in x; (0, -2) -> -0.3 in y (the box top edge).
    expected = torch.tensor([[0.55, 0.4], [0.5, 0.1]]).view(1, 1, 1, 1, 2, 2)
    torch.testing.assert_close(captured["locations"], expected)
    torch.testing.assert_close(captured["weights"], torch.full((1, 1, 1, 1, 2), 0.5))


def test_two_dim_reference_offsets_are_in_pixels():
    captured = {}

    def recording_kernel(value, spatial_shapes, sampling_locations, attention_weights):
        captured["locations"] = sampling_locations
        return multi_scale_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights)

    module = MultiScaleDeformableAttention(d_model=4, n_levels=2, n_heads=1, n_points=1, kernel=recording_kernel)
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(torch.tensor([1.0, -1.0, 2.0, 1.0]))
    refs = torch.tensor([[0.5, 0.5], [0.25, 0.5]]).view(1, 1, 2, 2)
    module(torch.randn(1, 1, 4), refs, torch.randn(1, 12 + 6, 4), torch.tensor(SHAPES))
    # Level 0 is 3x4: (+1/4, -1/3); level 1 is 2x3: (+2/3, +1/2).
    expected = torch.tensor([[0.75, 0.5 - 1 / 3], [0.25 + 2 / 3, 1.0]]).view(1, 1, 1, 2, 1, 2)
    torch.testing.assert_close(captured["locations"], expected)


def test_padding_mask_ignores_padded_values():
    module = make_module()
    query, refs, source = module_inputs(seed=7)
    # Widen the reference spread so that samples land on padded positions too.
    refs = refs * 1.2 - 0.1
    mask = torch.zeros(2, source.shape[1], dtype=torch.bool)
    mask[0, 2:5] = True
    mask[1, 12:] = True  # all of level 1 for the second sample
    out = module(query, refs, source, SHAPES, padding_mask=mask)

    changed = source.clone()
    changed[mask] = 100.0 * torch.randn(int(mask.sum()), 8, dtype=torch.float64)
    changed.requires_grad_()
    out_changed = module(query, refs, changed, SHAPES, padding_mask=mask)
    torch.testing.assert_close(out, out_changed, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(out_changed.sum(), changed)
    assert torch.equal(grad[mask], torch.zeros_like(grad[mask]))
    assert grad[~mask].abs().sum() > 0

    # Masking matters: without it the changed values reach the output.
    assert not torch.allclose(module(query, refs, changed, SHAPES), out)


def test_init_offset_pattern():
    module = MultiScaleDeformableAttention(d_model=16, n_levels=3, n_heads=8, n_points=4)
    directions = torch.tensor(
        [[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32
    )
    steps = torch.arange(1, 5, dtype=torch.float32)
    expected = directions[:, None, None, :] * steps[None, None, :, None]  # [M, 1, P, 2]
    bias = module.sampling_offsets.bias.detach().view(8, 3, 4, 2)
    # float32 cos/sin of multiples of pi/4 are off by ~1e-7, scaled by up to 4 points.
    torch.testing.assert_close(bias, expected.expand(8, 3, 4, 2), rtol=0, atol=1e-5)
    assert module.sampling_offsets.weight.abs().sum() == 0
    assert module.attention_weights.weight.abs().sum() == 0
    assert module.attention_weights.bias.abs().sum() == 0
    assert module.value_proj.bias.abs().sum() == 0 and module.output_proj.bias.abs().sum() == 0
    assert module.value_proj.weight.abs().sum() > 0 and module.output_proj.weight.abs().sum() > 0
    assert sorted(module.state_dict()) == sorted(
        f"{layer}.{kind}"
        for layer in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
        for kind in ("weight", "bias")
    )
    assert module.sampling_offsets.weight.shape == (8 * 3 * 4 * 2, 16)
    assert module.attention_weights.weight.shape == (8 * 3 * 4, 16)


def test_custom_kernel_is_called():
    calls = []

    def fake_kernel(value, spatial_shapes, sampling_locations, attention_weights):
        calls.append((value.shape, as_shape_list(spatial_shapes), sampling_locations.shape, attention_weights.shape))
        return torch.ones(value.shape[0], sampling_locations.shape[1], value.shape[2] * value.shape[3]).double()

    module = make_module(kernel=fake_kernel)
    query, refs, source = module_inputs()
    out = module(query, refs, source, SHAPES)
    assert calls == [((2, 18, 2, 4), SHAPES, (2, 3, 2, 2, 2, 2), (2, 3, 2, 2, 2))]
    torch.testing.assert_close(out, module.output_proj(torch.ones(2, 3, 8, dtype=torch.float64)))


def test_module_rejects_bad_inputs():
    module = make_module()
    query, refs, source = module_inputs()
    with pytest.raises(ValueError, match="levels"):
        module(query, refs, source, [(3, 4)])
    with pytest.raises(ValueError, match="reference_points"):
        module(query, refs[..., :1], source, SHAPES)
    with pytest.raises(ValueError, match="reference_points"):
        module(query, torch.cat([refs, refs[..., :1]], -1), source, SHAPES)
    with pytest.raises(ValueError, match="padding_mask"):
        module(query, refs, source, SHAPES, padding_mask=torch.zeros(2, 5, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    value, locations, weights = random_inputs(seed=8)
    expected = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    out = multi_scale_deformable_attention(value.cuda(), SHAPES, locations.cuda(), weights.cuda())
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-12)


def test_queries_in_chunks_give_the_same_bits(monkeypatch):
    """The sampler runs the queries in chunks to bound its memory; each query's output is its own, so
    chunks of 1, 2 or all queries give identical results (gradients agree up to summation order)."""
    from bifit.modeling import deformable_attention

    value, locations, weights = random_inputs(seed=4, num_queries=7)
    value, locations, weights = value.float(), locations.float(), weights.float()
    whole = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    samples_per_query = value.shape[0] * value.shape[2] * value.shape[3] * locations.shape[4]
    for queries in (1, 2, 3):
        monkeypatch.setattr(deformable_attention, "_SAMPLES_PER_CHUNK", queries * samples_per_query)
        assert torch.equal(multi_scale_deformable_attention(value, SHAPES, locations, weights), whole)
    value.requires_grad_(True)
    locations.requires_grad_(True)
    chunked_grads = torch.autograd.grad(multi_scale_deformable_attention(value, SHAPES, locations, weights).sum(),
                                        (value, locations))
    monkeypatch.setattr(deformable_attention, "_SAMPLES_PER_CHUNK", 1 << 23)
    whole_grads = torch.autograd.grad(multi_scale_deformable_attention(value, SHAPES, locations, weights).sum(),
                                      (value, locations))
    for chunked, full in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
