"""Activation checkpointing: the ResNet's trained stages, the encoder layers and the FPN's per-token
halves run again in the backward; a training step gives the same losses and gradients as without it
(dropout on, the clip in one chunk; in one-frame chunks without dropout, up to rounding)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import bifit
from bifit.cli import build_parser
from bifit.commands.train import build_config
from bifit.data.targets import build_target
from bifit.modeling import backbone
from bifit.modeling.pixel_decoder import CrossModalFPN
from bifit.modeling.transformer import DeformableEncoderLayer
from bifit.training import TrainingConfig, train
from bifit.training.criterion import build_criterion
from bifit.training.loop import set_train_mode


def moving_square(frames: int, height: int, width: int) -> torch.Tensor:
    masks = torch.zeros(frames, height, width, dtype=torch.bool)
    for t in range(frames):
        masks[t, 8:20, 4 + 4 * t : 16 + 4 * t] = True
    return masks


@pytest.fixture(scope="module")
def model(tiny_bert):
    torch.manual_seed(0)
    return bifit.build_model(bifit.get_preset("tiny", num_frames=3, dropout=0.1), text_encoder=str(tiny_bert)).train()


def count_runs(monkeypatch) -> dict[str, int]:
    """From now on, how often the recomputable parts run: ResNet stages, encoder layers, FPN levels."""
    calls = {"encoder_layer": 0, "fpn_level": 0, "resnet_stage": 0}
    real_layer, real_level, real_stage = DeformableEncoderLayer.forward, CrossModalFPN._finish_level, backbone._run_blocks

    def stage(*args, **kwargs):
        calls["resnet_stage"] += 1
        return real_stage(*args, **kwargs)

    def layer(self, *args, **kwargs):
        calls["encoder_layer"] += 1
        return real_layer(self, *args, **kwargs)

    def level(self, *args, **kwargs):
        calls["fpn_level"] += 1
        return real_level(self, *args, **kwargs)

    monkeypatch.setattr(DeformableEncoderLayer, "forward", layer)
    monkeypatch.setattr(CrossModalFPN, "_finish_level", level)
    monkeypatch.setattr(backbone, "_run_blocks", stage)
    return calls


def step(model, monkeypatch, checkpointing: bool, one_frame_chunks: bool = False) -> tuple[dict, dict, dict]:
    """One forward and backward with dropout on; returns the losses, the gradients and how often the
    recomputable parts ran. `one_frame_chunks`: token budgets that let the checkpointed parts take one
    frame at a time (at 360 x 640, what the real budgets give at stride 4)."""
    calls = count_runs(monkeypatch)
    model = copy.deepcopy(model)
    model.set_activation_checkpointing(checkpointing)
    if one_frame_chunks:
        model.backbone.chunk_pixels = 1
        model.transformer.inference_chunk_tokens = 1
        for block in model.pixel_decoder.blocks:
            block.inference_chunk_tokens = 1
    torch.manual_seed(7)
    video = torch.randn(3, 3, 40, 56)
    target = build_target(moving_square(3, 40, 56), "the square moving right")
    losses = build_criterion()(model([video], [target["caption"]], size_divisibility=32), [target])
    losses["loss"].backward()
    monkeypatch.undo()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in losses.items()}, grads, calls


def test_a_checkpointed_step_recomputes_and_gives_the_same_losses_and_gradients(model, monkeypatch):
    plain_losses, plain_grads, plain_calls = step(model, monkeypatch, checkpointing=False)
    losses, grads, calls = step(model, monkeypatch, checkpointing=True)
    layers, levels = model.config.enc_layers, len(model.pixel_decoder.blocks)
    # The tiny preset trains the whole ResNet: its four stages are recomputed.
    assert plain_calls == {"encoder_layer": layers, "fpn_level": levels, "resnet_stage": 4}
    assert calls == {"encoder_layer": 2 * layers, "fpn_level": 2 * levels, "resnet_stage": 8}

    assert losses == pytest.approx(plain_losses, rel=1e-6, abs=1e-7)
    assert grads.keys() == plain_grads.keys() and len(grads) > 100
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointed_parts_in_frame_chunks_give_the_same_losses_and_gradients_without_dropout(model, monkeypatch):
    # With dropout on, chunks draw their dropout masks chunk by chunk: other random numbers.
    model = copy.deepcopy(model)
    set_train_mode(model, disable_dropout=True)
    plain_losses, plain_grads, _ = step(model, monkeypatch, checkpointing=False)
    losses, grads, calls = step(model, monkeypatch, checkpointing=True, one_frame_chunks=True)
    frames, layers, levels = 3, model.config.enc_layers, len(model.pixel_decoder.blocks)
    assert calls == {"encoder_layer": 2 * layers * frames, "fpn_level": 2 * levels * frames, "resnet_stage": 8 * frames}
    assert losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
    assert grads.keys() == plain_grads.keys()
    # Per tensor, not per element: a frame's convolutions round differently from the batch's, and the
    # GroupNorm of the 1 x 1 stride-64 map magnifies that (measured: 1.3e-4 of the norm at most).
    for name, grad in grads.items():
        assert (grad - plain_grads[name]).norm() <= 1e-3 * plain_grads[name].norm() + 1e-12, name


def test_without_autograd_nothing_is_recomputed(model, monkeypatch):
    calls = count_runs(monkeypatch)
    checkpointed = copy.deepcopy(model).eval()
    checkpointed.set_activation_checkpointing(True)
    video = torch.randn(3, 3, 40, 56)
    with torch.no_grad():
        out = checkpointed(video[None], ["the square moving right"])
        reference = copy.deepcopy(model).eval()(video[None], ["the square moving right"])
    # Once each in each of the two forwards.
    layers, levels = model.config.enc_layers, len(model.pixel_decoder.blocks)
    assert calls == {"encoder_layer": 2 * layers, "fpn_level": 2 * levels, "resnet_stage": 8}
    torch.testing.assert_close(out["pred_masks"], reference["pred_masks"], rtol=0, atol=0)


def test_the_training_setting_reaches_the_model_and_keeps_the_losses(tiny_bert, tmp_path, monkeypatch):
    seen = []
    real = bifit.BifitModel.set_activation_checkpointing

    def spy(self, enabled):
        seen.append(enabled)
        return real(self, enabled)

    monkeypatch.setattr(bifit.BifitModel, "set_activation_checkpointing", spy)
    model = bifit.get_preset("tiny").replace(text_encoder=str(tiny_bert), num_frames=2, dropout=0.1)
    config = TrainingConfig(
        model=model, data="synthetic", synthetic_samples=4, synthetic_size=(32, 32), epochs=1, batch_size=2,
        lr=1e-3, lr_backbone=1e-3, lr_text_fusion=1e-3, lr_drop=(), num_workers=0, device="cpu", log_every=1,
        seed=0, keep_last=1,
    )
    records = {}
    for enabled in (False, True):
        run = tmp_path / str(enabled)
        train(config.replace(activation_checkpointing=enabled), run, progress=False)
        records[enabled] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert seen == [False, True]
    assert len(records[True]) == 2
    for plain, checkpointed in zip(records[False], records[True]):
        assert checkpointed["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert checkpointed["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)


def test_the_command_line_flag_and_set_switch_it_on():
    base = ["train", "--preset", "synthetic_tiny", "--output-dir", "unused"]
    assert build_config(build_parser().parse_args(base)).activation_checkpointing is False
    assert build_config(build_parser().parse_args([*base, "--activation-checkpointing"])).activation_checkpointing
    argv = [*base, "--set", "activation_checkpointing=true"]
    assert build_config(build_parser().parse_args(argv)).activation_checkpointing is True
