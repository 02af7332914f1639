"""The backbone's optional folding of frozen batch norm into its convolutions (fast inference): same
outputs and gradients as the torchvision modules applied one by one; off by default, where the
outputs are exactly those modules'."""

from __future__ import annotations

import pytest
import torch

from bifit.modeling.backbone import FrozenBatchNorm2d, ResNetBackbone, conv_norm


def randomise_norms(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, FrozenBatchNorm2d):
                norm.weight.copy_(1 + 0.2 * torch.randn(norm.weight.shape, generator=gen))
                norm.bias.copy_(0.2 * torch.randn(norm.bias.shape, generator=gen))
                norm.running_mean.copy_(0.2 * torch.randn(norm.running_mean.shape, generator=gen))
                norm.running_var.copy_(0.5 + torch.rand(norm.running_var.shape, generator=gen))


def unfolded_forward(backbone: ResNetBackbone, x: torch.Tensor) -> list[torch.Tensor]:
    """torchvision's own module forwards, norms applied after the convolutions."""
    body = backbone.body
    x = body["maxpool"](torch.relu(body["bn1"](body["conv1"](x))))
    outs = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        x = body[stage](x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("bias", [False, True])
def test_conv_norm_folds_a_frozen_norm_exactly(bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=bias).double()
    norm = FrozenBatchNorm2d(5).double()
    randomise_norms(norm)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(conv_norm(conv, norm, x), norm(conv(x)), rtol=1e-12, atol=1e-12)


def test_conv_norm_applies_other_norms_after_the_convolution():
    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(4, 8, 1), torch.nn.GroupNorm(2, 8)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(conv_norm(conv, norm, x), norm(conv(x)), rtol=0, atol=0)


@pytest.mark.parametrize("name,norm", [("resnet18", "frozen_bn"), ("resnet50", "frozen_bn"), ("resnet18", "group_norm")])
def test_backbone_equals_the_unfolded_torchvision_forward(name, norm):
    torch.manual_seed(0)
    backbone = ResNetBackbone(name, norm=norm, train_stem=True).double()
    backbone.fold_frozen_norms = True
    randomise_norms(backbone)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64, requires_grad=True)
    ours = backbone(x)
    theirs = unfolded_forward(backbone, x)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    params = [p for p in backbone.parameters() if p.requires_grad]
    grads_ours = torch.autograd.grad(sum(o.square().mean() for o in ours), [x, *params])
    grads_theirs = torch.autograd.grad(sum(o.square().mean() for o in theirs), [x, *params])
    for a, b in zip(grads_ours, grads_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_by_default_the_backbone_is_exactly_the_torchvision_forward():
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18")
    randomise_norms(backbone)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(backbone(x), unfolded_forward(backbone, x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        backbone.fold_frozen_norms = True
        folded = backbone(x)
    assert any(not torch.equal(a, b) for a, b in zip(folded, unfolded_forward(backbone, x)))


def test_frozen_norm_buffers_load_from_torchvision_state_dicts():
    backbone = ResNetBackbone("resnet18")
    state = backbone.body.state_dict()
    state["bn1.num_batches_tracked"] = torch.tensor(7)
    backbone.body.load_state_dict(state)  # the batch counter of a trained torchvision model is dropped
    assert "bn1.num_batches_tracked" not in backbone.body.state_dict()


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls


def test_without_autograd_the_frames_run_in_chunks_with_the_batch_result():
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet50")
    randomise_norms(backbone)
    x = torch.randn(5, 3, 64, 96)
    with torch.no_grad():
        whole = backbone(x)
        backbone.chunk_pixels = 2 * 64 * 96
        stem_calls, layer4_calls = count_calls(backbone.body["conv1"]), count_calls(backbone.body["layer4"][0].conv1)
        chunked = backbone(x)
    assert stem_calls == [2, 2, 1] and layer4_calls == [2, 2, 1]
    # The convolutions may pick another algorithm for a smaller batch: equal up to float rounding.
    for a, b in zip(chunked, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("train_stem", [False, True])
def test_with_autograd_only_the_frozen_stages_run_in_chunks(train_stem):
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18", train_stem=train_stem)
    randomise_norms(backbone)
    backbone.chunk_pixels = 32 * 48
    x = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        expected = backbone(x)
    stem_calls, layer2_calls = count_calls(backbone.body["conv1"]), count_calls(backbone.body["layer2"][0].conv1)
    outs = backbone(x)
    assert stem_calls == ([3] if train_stem else [1, 1, 1]) and layer2_calls == [3]
    for a, b in zip(outs, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    sum(o.square().mean() for o in outs).backward()
    assert backbone.body["layer2"][0].conv1.weight.grad is not None
    assert (backbone.body["conv1"].weight.grad is not None) == train_stem


def test_channels_last_returns_the_same_stages_in_that_layout():
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18")
    randomise_norms(backbone)
    backbone.chunk_pixels = 32 * 48
    x = torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        plain = backbone(x)
        backbone.channels_last = True
        last = backbone(x)
    for a, b in zip(last, plain, strict=True):
        assert a.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
