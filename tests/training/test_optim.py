"""The official optimiser recipe: parameter groups matched by our names, rates, decay, LR drops,
and the training presets against the official options."""

from __future__ import annotations

from dataclasses import replace

import re
from pathlib import Path

import pytest
import torch

import bifit
from bifit.modeling.checkpoint import official_key_to_bifit
from bifit.training import (
    TrainingConfig,
    apply_overrides,
    build_optimizer,
    build_scheduler,
    get_training_preset,
    parameter_groups,
)
from bifit.training.optim import GROUP_NAMES, parameter_group_of

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "official_model" / "reference.pt"

# The official opts.py keyword lists, matched by substring as main.py does.
OFFICIAL_KEYWORDS = {
    "backbone": ["backbone.0"],
    "text_encoder": ["text_encoder"],
    "text_fusion": ["text_fusion_module"],
    "linear_proj": ["reference_points", "sampling_offsets"],
}


def official_group(key: str) -> str:
    matches = [group for group, words in OFFICIAL_KEYWORDS.items() if any(w in key for w in words)]
    assert len(matches) <= 1, key
    return matches[0] if matches else "main"


def test_groups_match_the_official_keywords_on_every_official_key():
    keys = torch.load(REFERENCE, weights_only=True)["state_dict_shapes"].keys()
    seen = set()
    for key in keys:
        ours = official_key_to_bifit(key)
        assert parameter_group_of(ours) == official_group(key), (key, ours)
        seen.add(official_group(key))
    # The fixture covers every group (the text encoder is frozen there but its keys exist).
    assert seen == set(GROUP_NAMES)


@pytest.fixture(scope="module")
def tiny_model(tiny_bert):
    """The tiny model with the released backbone options (frozen batch norm, stem and layer1 frozen)."""
    torch.manual_seed(0)
    config = bifit.get_preset("tiny", backbone_norm="frozen_bn", train_backbone_stem=False)
    return bifit.build_model(config, text_encoder=str(tiny_bert))


def distinct_rates() -> TrainingConfig:
    return TrainingConfig(lr=1e-3, lr_backbone=2e-3, lr_text_encoder=3e-3, lr_text_fusion=4e-3, lr_linear_proj_mult=0.5)


def test_optimizer_groups_rates_and_decay(tiny_model):
    optimizer = build_optimizer(tiny_model, distinct_rates())
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == list(GROUP_NAMES)
    assert {name: g["lr"] for name, g in groups.items()} == {
        "main": 1e-3, "backbone": 2e-3, "text_encoder": 3e-3, "text_fusion": 4e-3, "linear_proj": 5e-4,
    }
    assert all(g["weight_decay"] == 5e-4 and g["eps"] == 1e-8 for g in groups.values())
    assert build_optimizer(tiny_model, replace(distinct_rates(), adam_eps=1e-3)).param_groups[0]["eps"] == 1e-3
    # The frozen text encoder and the frozen stem/layer1 are left out; every trainable tensor is in one group.
    assert groups["text_encoder"]["params"] == []
    by_id = {id(p): name for name, p in tiny_model.named_parameters()}
    grouped = [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
    trainable = [n for n, p in tiny_model.named_parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    names = {g["name"]: [by_id[id(p)] for p in g["params"]] for g in optimizer.param_groups}
    assert names["backbone"] and all(n.startswith("backbone.body.layer") for n in names["backbone"])
    assert not any(re.match(r"backbone\.body\.(conv1|bn1|layer1)\.", n) for n in names["backbone"])
    assert names["text_fusion"] and all(n.startswith("bvli.text_from_vision.") for n in names["text_fusion"])
    assert {n.split(".")[-2] for n in names["linear_proj"]} == {"sampling_offsets", "reference_points"}
    assert not any(
        "sampling_offsets" in n or n.startswith(("backbone.", "bvli.text_from_vision.")) for n in names["main"]
    )


def test_fused_update_on_cpu_equals_the_reference_adamw(tiny_model):
    config = distinct_rates()
    optimizer = build_optimizer(tiny_model, config)
    assert optimizer.defaults["fused"]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    start = [p.detach().clone() for p in params]
    reference_params = [torch.nn.Parameter(p.clone()) for p in start]
    it = iter(reference_params)
    reference = torch.optim.AdamW(
        [{"params": [next(it) for _ in g["params"]], "lr": g["lr"]} for g in optimizer.param_groups],
        lr=config.lr, weight_decay=config.weight_decay, foreach=False,
    )
    generator = torch.Generator().manual_seed(0)
    try:
        for _ in range(3):
            for p, q in zip(params, reference_params):
                p.grad = torch.randn(p.shape, generator=generator)
                q.grad = p.grad.clone()
            optimizer.step()
            reference.step()
        for p, q in zip(params, reference_params):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)
        assert any(not torch.equal(p.detach(), s) for p, s in zip(params, start))
    finally:
        with torch.no_grad():  # the module-scoped model goes back to its initial weights
            for p, s in zip(params, start):
                p.copy_(s)
                p.grad = None


def test_a_backbone_trained_from_scratch_trains_whole_with_group_norm(tiny_bert):
    model = bifit.build_model(bifit.get_preset("tiny"), text_encoder=str(tiny_bert))
    groups = {g["name"]: g for g in parameter_groups(model, distinct_rates())}
    by_id = {id(p): name for name, p in model.named_parameters()}
    names = [by_id[id(p)] for p in groups["backbone"]["params"]]
    assert "backbone.body.conv1.weight" in names and "backbone.body.layer1.0.bn1.weight" in names
    assert isinstance(model.backbone.body["bn1"], torch.nn.GroupNorm)


def test_unfrozen_text_encoder_trains_at_its_own_rate(tiny_bert):
    model = bifit.build_model(bifit.get_preset("tiny").replace(freeze_text_encoder=False), text_encoder=str(tiny_bert))
    groups = {g["name"]: g for g in parameter_groups(model, distinct_rates())}
    expected = [p for n, p in model.named_parameters() if n.startswith("text_encoder.")]
    assert len(groups["text_encoder"]["params"]) == len(expected) > 0
    assert groups["text_encoder"]["lr"] == 3e-3


def test_lr_drops_after_the_scheduled_epochs():
    param = torch.nn.Parameter(torch.zeros(1))
    config = TrainingConfig()  # official: 10 epochs, drops after epochs 6 and 8, factor 0.1
    optimizer = torch.optim.AdamW([{"params": [param], "lr": config.lr}])
    scheduler = build_scheduler(optimizer, config)
    rates = []
    for _ in range(config.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([5e-5] * 6 + [5e-6] * 2 + [5e-7] * 2)


def test_presets_follow_the_official_recipes():
    ytvos = get_training_preset("ytvos_r50")
    assert (ytvos.lr, ytvos.lr_backbone, ytvos.lr_text_encoder, ytvos.lr_text_fusion) == (5e-5, 1e-5, 1e-5, 5e-5)
    assert (ytvos.lr_linear_proj_mult, ytvos.weight_decay, ytvos.clip_max_norm) == (1.0, 5e-4, 0.1)
    assert (ytvos.epochs, ytvos.lr_drop, ytvos.batch_size, ytvos.num_frames, ytvos.seed) == (10, (6, 8), 1, 6, 42)
    assert ytvos.model == bifit.get_preset("bifit_r50") and ytvos.data == "ytvos"
    a2d = get_training_preset("a2d_r50")
    assert (a2d.data, a2d.epochs, a2d.lr_drop, a2d.batch_size) == ("a2d", 6, (3, 5), 2)
    assert a2d.model == ytvos.model and a2d.lr == ytvos.lr
    tiny = get_training_preset("synthetic_tiny")
    assert tiny.data == "synthetic" and tiny.model.backbone == "resnet18" and tiny.model.freeze_text_encoder
    with pytest.raises(ValueError, match="unknown training preset 'nope'"):
        get_training_preset("nope")


def test_overrides_reach_training_and_model_fields():
    config = apply_overrides(
        get_training_preset("ytvos_r50"),
        ["lr=1e-4", "lr_drop=[2, 4]", "hidden_dim=128", "model.num_frames=3", "data_root=/data/x",
         "max_steps=null", "disable_dropout=true", "epochs=3"],
    )
    assert config.lr == 1e-4 and config.lr_drop == (2, 4) and config.epochs == 3 and config.disable_dropout
    assert config.model.hidden_dim == 128 and config.num_frames == 3 and config.data_root == "/data/x"
    assert config.max_steps is None
    assert TrainingConfig.from_dict(config.to_dict()) == config
    for bad, message in [
        (["nonsense=1"], "unknown setting 'nonsense'"),
        (["model.nonsense=1"], "unknown model field"),
        (["epochs=two"], "epochs needs an integer"),
        (["lr"], "must look like key=value"),
        (["amp=fp8"], "amp must be one of"),
        (["adam_eps=0"], "adam_eps must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            apply_overrides(get_training_preset("ytvos_r50"), bad)
