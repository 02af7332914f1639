"""Backbone pretraining on synthetic attribute labels: labels, learning, the saved file, the command."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import bifit
from bifit.cli import main
from bifit.data.synthetic import COLOURS, SHAPES, SIZES, SceneConfig, generate_clip
from bifit.training.backbone_pretraining import (
    BackbonePretrainingConfig,
    attribute_labels,
    pretrain_backbone,
)
from bifit.modeling.checkpoint import atomic_save, load_backbone_weights


def test_labels_give_every_visible_pixel_its_objects_attributes():
    clip = generate_clip(5, SceneConfig(num_frames=3, min_objects=3, max_objects=4))
    labels = attribute_labels(clip)
    assert labels.shape == (3, *clip.frames.shape[:3]) and labels.dtype == np.int64
    union = np.zeros(clip.frames.shape[:3], dtype=bool)
    for obj in clip.objects:
        a = obj.attributes
        expected = (SHAPES.index(a.shape) + 1, list(COLOURS).index(a.colour) + 1, SIZES.index(a.size) + 1)
        for slot, value in enumerate(expected):
            assert (labels[slot][obj.masks] == value).all()
        union |= obj.masks
    assert union.any()
    assert (labels[:, ~union] == 0).all()
    assert (labels[:, union] > 0).all()


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        BackbonePretrainingConfig(steps=0)
    with pytest.raises(ValueError, match="size"):
        BackbonePretrainingConfig(size=(16, 16))


def test_pretraining_lowers_the_loss_and_yields_loadable_torchvision_weights(tiny_bert, tmp_path):
    model_config = bifit.get_preset("tiny")  # group-norm ResNet-18, as the synthetic preset
    config = BackbonePretrainingConfig(steps=30, clips_per_step=2, num_frames=2, size=(64, 64), seed=1)
    losses = []
    state = pretrain_backbone(model_config, config, on_step=lambda step, loss, acc: losses.append(loss))
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert "conv1.weight" in state and "layer4.1.conv2.weight" in state and not any(k.startswith("fc.") for k in state)
    model = bifit.build_model(model_config, text_encoder=str(tiny_bert))
    load_backbone_weights(model, atomic_save(state, tmp_path / "backbone.pth"))
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_pretraining_is_a_function_of_its_seed_and_leaves_the_global_rng_alone():
    config = BackbonePretrainingConfig(steps=2, clips_per_step=1, num_frames=1, size=(32, 32), seed=4)
    rng = torch.get_rng_state()
    first = pretrain_backbone(bifit.get_preset("tiny"), config)
    assert torch.equal(torch.get_rng_state(), rng)
    second = pretrain_backbone(bifit.get_preset("tiny"), config)
    other = pretrain_backbone(bifit.get_preset("tiny"), dataclasses.replace(config, seed=5))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])


def test_command_writes_weights_and_summary_and_never_overwrites_unasked(tmp_path, capsys):
    output = tmp_path / "runs" / "backbone.pth"
    args = ["pretrain-backbone", "--output", str(output), "--steps", "2", "--clips-per-step", "1", "--no-progress"]
    assert main(args) == 0
    assert "--backbone-weights" in capsys.readouterr().out
    state = torch.load(output, weights_only=True)
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    summary = json.loads((tmp_path / "runs" / "backbone.pth.json").read_text())
    assert summary["backbone"] == "resnet18" and summary["config"]["steps"] == 2
    assert set(summary["last_step"]) >= {"loss", "shape_s8", "colour_s16", "size_s32"}

    written = output.read_bytes()
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert output.read_bytes() == written
    assert main([*args, "--seed", "9", "--overwrite"]) == 0
    assert output.read_bytes() != written

    lone_summary = tmp_path / "other.pth.json"
    lone_summary.write_text("{}")
    assert main(["pretrain-backbone", "--output", str(tmp_path / "other.pth"), "--steps", "1"]) == 2
    assert f"{lone_summary} already exists" in capsys.readouterr().err
    assert lone_summary.read_text() == "{}" and not (tmp_path / "other.pth").exists()

    assert main(["pretrain-backbone", "--output", str(tmp_path), "--steps", "1"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["pretrain-backbone", "--output", str(tmp_path / "x.pth"), "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
