"""Hostile or damaged weight files: refused pickles are named as such (with a way to convert a trusted
file), and non-finite weights are refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import bifit
from bifit.modeling.checkpoint import CheckpointError, read_official_state_dict, read_torch_file
from bifit.training.checkpointing import load_backbone_weights, load_training_checkpoint

SRC = Path(bifit.__file__).resolve().parents[1]


class RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_command_is_refused_as_unsafe_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "payload": RunsACommand(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        read_official_state_dict(path)
    message = str(info.value)
    # os.system pickles as posix.system: a module torch blocks, whose refusal torch words differently.
    assert "holds Python objects or code (posix.system) besides tensors" in message
    assert "does not load for safety" in message and "truncated or corrupt" not in message
    assert "\n" not in message
    assert not marker.exists()


def test_the_refusal_tells_how_to_convert_a_trusted_file_and_that_advice_works(tmp_path):
    path = tmp_path / "trusted.pth"
    weights = {"w": torch.arange(3.0)}
    torch.save({"model": weights, "ratio": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match=r"\(fractions\.Fraction\)") as info:
        read_official_state_dict(path)
    command = re.search(r'python -c "(.*?)" and use weights\.pth', str(info.value)).group(1)
    done = subprocess.run([sys.executable, "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert torch.equal(read_official_state_dict(tmp_path / "weights.pth")["w"], weights["w"])


def test_every_reader_of_torch_files_reports_the_refusal(tmp_path, tiny_bert):
    path = tmp_path / "objects.pt"
    torch.save({"model": {"w": torch.ones(1)}, "ratio": Fraction(2, 3), "optimizer": {}, "scheduler": {},
                "step": 1, "epoch": 0, "step_in_epoch": 1, "rng": []}, path)
    with pytest.raises(CheckpointError, match="does not load for safety"):
        load_training_checkpoint(path)
    model = bifit.build_model(bifit.get_preset("tiny", backbone_norm="frozen_bn"), text_encoder=str(tiny_bert))
    with pytest.raises(CheckpointError, match="does not load for safety"):
        load_backbone_weights(model, path)


def test_damaged_files_are_still_called_damaged(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(100)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_torch_file(truncated, "PyTorch checkpoint")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as info:
        read_torch_file(noise, "PyTorch checkpoint")
    assert "for safety" not in str(info.value)


# ------------------------------------------------------------------------------------- non-finite weights
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_every_reader(tmp_path, tiny_bert, bad):
    official = tmp_path / "official.pth"
    torch.save({"model": {"a": torch.ones(2), "b": torch.tensor([1.0, bad])}}, official)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 tensor\(s\) \(e\.g\. b\)"):
        read_official_state_dict(official)

    model = bifit.build_model(bifit.get_preset("tiny", backbone_norm="frozen_bn"), text_encoder=str(tiny_bert))
    backbone = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    backbone["conv1.weight"][0, 0, 0, 0] = bad
    torch.save(backbone, tmp_path / "backbone.pth")
    with pytest.raises(CheckpointError, match="conv1.weight"):
        load_backbone_weights(model, tmp_path / "backbone.pth")
