"""Checkpoints that never lose work: exact resume on CPU, atomic writes, pruning, random states,
and initial weights (torchvision backbone, bifit directory)."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from full_disk import fill_disk

import bifit
from bifit.modeling.checkpoint import CheckpointError, atomic_save, load_backbone_weights, load_init_checkpoint
from bifit.training import TrainingConfig, train
from bifit.training.state import (
    capture_rng_state,
    list_checkpoints,
    load_latest_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
)



def resume_config(text_encoder: Path, **changes) -> TrainingConfig:
    # Dropout stays ON (0.1 everywhere), so equal weights prove the random states were restored.
    model = bifit.get_preset("tiny").replace(text_encoder=str(text_encoder), num_frames=2, dropout=0.1)
    settings = dict(
        model=model, data="synthetic", synthetic_samples=6, synthetic_size=(32, 32), epochs=2, batch_size=2,
        lr=1e-3, lr_backbone=1e-3, lr_text_fusion=1e-3, lr_drop=(1,), num_workers=0, device="cpu",
        log_every=1, seed=3,
    )
    settings.update(changes)
    return TrainingConfig(**settings)


def test_interrupted_and_resumed_run_ends_with_identical_weights(tiny_bert, tmp_path):
    # 6 clips / batch 2 = 3 steps per epoch: the interruption at step 2 is mid-epoch, the resumed
    # part crosses the epoch boundary and its LR drop.
    config = resume_config(tiny_bert, max_steps=4)
    straight = train(config, tmp_path / "straight", progress=False)
    first = train(config.replace(max_steps=2), tmp_path / "resumed", progress=False)
    assert first.step == 2
    resumed = train(config, tmp_path / "resumed", resume=True, progress=False)
    assert straight.step == resumed.step == 4

    a = load_file(str(straight.final_dir / "model.safetensors"))
    b = load_file(str(resumed.final_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]

    def losses(run: Path) -> list[tuple[int, float]]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, lines)]

    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    assert [lr for _, _, lr in losses(tmp_path / "straight")] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4])


def test_resume_without_checkpoint_starts_fresh_and_finished_run_stays_finished(tiny_bert, tmp_path):
    config = resume_config(tiny_bert, max_steps=1, model=bifit.get_preset("tiny").replace(
        text_encoder=str(tiny_bert), num_frames=2))
    result = train(config, tmp_path / "run", resume=True, progress=False)
    assert result.step == 1
    again = train(config, tmp_path / "run", resume=True, progress=False)
    assert again.step == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_atomic_save_keeps_last_n_and_skips_a_corrupt_newest(tmp_path):
    directory = tmp_path / "ckpt"
    for step in (1, 2, 3, 4):
        save_training_checkpoint(
            directory,
            {"model": {"w": torch.full((2,), float(step))}, "optimizer": {}, "scheduler": {}, "step": step,
             "epoch": 0, "step_in_epoch": step, "rng": [capture_rng_state()]},
            keep_last=2,
        )
    assert [p.name for p in list_checkpoints(directory)] == ["checkpoint-00000003.pt", "checkpoint-00000004.pt"]
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint-00000003.pt", "checkpoint-00000004.pt"]
    (directory / "checkpoint-00000005.pt").write_bytes(b"torn")
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        path, state = load_latest_checkpoint(directory)
    assert path.name == "checkpoint-00000004.pt" and torch.equal(state["model"]["w"], torch.full((2,), 4.0))
    assert load_latest_checkpoint(tmp_path / "empty") is None


def test_atomic_save_replaces_whole_files(tmp_path):
    target = tmp_path / "state.pt"
    atomic_save({"a": torch.ones(3)}, target)
    atomic_save({"a": torch.zeros(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_atomic_save_on_a_full_disk_says_so_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    atomic_save({"a": torch.ones(3)}, target)
    made = fill_disk(monkeypatch, capacity=100_000, fails=lambda name: True)
    with pytest.raises(OSError) as caught:
        atomic_save({"a": torch.zeros(1_000_000)}, target)
    assert len(made) == 1
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(3))


def test_random_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    atomic_save(capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


@pytest.fixture(scope="module")
def tiny_model(tiny_bert):
    # Frozen batch norm, as torchvision-format (ImageNet) backbone weights require.
    torch.manual_seed(0)
    return bifit.build_model(bifit.get_preset("tiny", backbone_norm="frozen_bn"), text_encoder=str(tiny_bert))


def test_torchvision_backbone_weights_load_and_mismatches_are_refused(tiny_model, tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    load_backbone_weights(tiny_model, tmp_path / "resnet18.pth")
    body = tiny_model.backbone.body.state_dict()
    for key, value in resnet.state_dict().items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(body[key], value), key
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(CheckpointError, match="does not fit the resnet18 backbone"):
        load_backbone_weights(tiny_model, tmp_path / "resnet34.pth")
    with pytest.raises(FileNotFoundError, match="backbone weights not found"):
        load_backbone_weights(tiny_model, tmp_path / "missing.pth")


def test_init_checkpoint_from_a_bifit_directory_keeps_fresh_class_heads(tiny_model, tiny_bert, tmp_path):
    bifit.save_pretrained(tiny_model, tmp_path / "source")
    torch.manual_seed(1)
    fresh = bifit.build_model(bifit.get_preset("tiny", backbone_norm="frozen_bn"), text_encoder=str(tiny_bert))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    report = load_init_checkpoint(fresh, tmp_path / "source")
    assert report["unexpected"] == [] and report["missing"]
    assert all(k.startswith("class_embed.") for k in report["missing"])
    source = tiny_model.state_dict()
    for key, value in fresh.state_dict().items():
        expected = before[key] if key.startswith("class_embed.") else source[key]
        assert torch.equal(value, expected), key


def test_init_checkpoint_reads_compact_checkpoints_through_the_loader(tiny_model, tiny_bert, tmp_path):
    bifit.save_pretrained(tiny_model, tmp_path / "int8", weights="int8-per-channel")
    fresh = bifit.build_model(bifit.get_preset("tiny", backbone_norm="frozen_bn"), text_encoder=str(tiny_bert))
    load_init_checkpoint(fresh, tmp_path / "int8")
    source = tiny_model.state_dict()
    weight = "controller.layers.0.weight"
    step = float(source[weight].abs().max()) / 127
    assert fresh.state_dict()[weight].dtype == torch.float32
    assert torch.allclose(fresh.state_dict()[weight], source[weight], atol=step / 2 + 1e-7)
