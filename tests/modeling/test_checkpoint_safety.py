"""Hostile or damaged weight files: refused pickles are named as such (with a way to convert a trusted
file), a tampered config.json is checked against the stored tensor shapes before any model is built,
and non-finite weights are refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import bifit
import bifit.modeling.checkpoint as checkpoint_module
from bifit.config import BifitConfig
from bifit.modeling.checkpoint import CheckpointError, load_backbone_weights, read_official_state_dict, read_torch_file
from bifit.training.state import load_training_checkpoint

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


# ------------------------------------------------------------------------------- tampered config.json
@pytest.fixture(scope="module")
def saved(tiny_bert, module_tmp) -> Path:
    torch.manual_seed(0)
    return bifit.save_pretrained(bifit.build_model("tiny", text_encoder=str(tiny_bert)), module_tmp / "m")


@pytest.fixture
def copy_of(saved, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


@pytest.fixture
def no_real_build(monkeypatch):
    """Fail the test if a checkpoint's model is really built (the shape check builds only on the meta device)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(checkpoint_module.TextEncoder, "from_config", refuse)
    monkeypatch.setattr(checkpoint_module.TextEncoder, "from_pretrained", refuse)


def tamper(directory: Path, **changes) -> None:
    path = directory / "config.json"
    meta = json.loads(path.read_text())
    meta["model"].update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("changes, message", [
    ({"hidden_dim": 1e9}, "hidden_dim must be an integer, got 1000000000.0"),
    ({"hidden_dim": 10**9}, "hidden_dim must lie in [1, 8192], got 1000000000"),
    ({"dec_layers": 1e5}, "dec_layers must be an integer"),
    ({"dec_layers": 100000}, "dec_layers must lie in [1, 64], got 100000"),
    ({"nheads": 0}, "nheads must lie in [1, 256], got 0"),
    ({"enc_n_points": -3}, "enc_n_points must lie in [1, 64], got -3"),
    ({"fpn_sr_ratios": [8, 4, 2, 10**6]}, "fpn_sr_ratios must lie in [1, 64]"),
    ({"controller_layers": 10**9}, "controller_layers must lie in [2, 16]"),
    ({"dropout": "0.1"}, "dropout must be a finite number"),
])
def test_nonsense_configs_are_refused_before_anything_is_built(copy_of, no_real_build, changes, message):
    tamper(copy_of, **changes)
    with pytest.raises(CheckpointError, match="holds an invalid model config") as info:
        bifit.load_pretrained(copy_of)
    assert message in str(info.value)


@pytest.mark.parametrize("changes, message", [
    ({"hidden_dim": 128}, "bbox_embed.0.layers.0.bias: stored [64] vs config [128]"),
    ({"dec_layers": 3}, "missing ['bbox_embed.2.layers.0.bias'"),
    ({"dec_layers": 1}, "unexpected ['bbox_embed.1."),
    ({"nheads": 8}, "sampling_offsets.weight: stored [128, 64] vs config [256, 64]"),
    ({"dim_feedforward": 4096}, "ffn.linear1.weight: stored [128, 64] vs config [4096, 64]"),
    ({"num_queries": 300}, "query_embed.weight: stored [3, 64] vs config [300, 64]"),
])
def test_sensible_configs_that_do_not_fit_the_weights_are_refused_before_building(
    copy_of, no_real_build, changes, message
):
    tamper(copy_of, **changes)
    with pytest.raises(CheckpointError, match="does not fit its config") as info:
        bifit.load_pretrained(copy_of)
    assert message in str(info.value)


def test_a_tampered_text_encoder_config_is_refused_before_building(copy_of, no_real_build):
    path = copy_of / "text_encoder" / "config.json"
    original = json.loads(path.read_text())
    path.write_text(json.dumps({**original, "num_hidden_layers": 100000}))
    with pytest.raises(CheckpointError, match="asks for 100000 layers"):
        bifit.load_pretrained(copy_of)
    path.write_text(json.dumps({**original, "vocab_size": 10**9}))
    with pytest.raises(CheckpointError, match="word_embeddings.weight: stored"):
        bifit.load_pretrained(copy_of)


def test_nan_in_a_bifit_checkpoint_is_refused(copy_of):
    weights = copy_of / "model.safetensors"
    state = load_file(str(weights))
    state["query_embed.weight"][1, 2] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"NaN or infinite values .*query_embed\.weight"):
        bifit.load_pretrained(copy_of)


def test_the_untampered_checkpoint_still_loads_exactly(saved, tiny_bert):
    torch.manual_seed(0)
    reference = bifit.build_model("tiny", text_encoder=str(tiny_bert)).state_dict()
    loaded = bifit.load_pretrained(saved).state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_config_validation_does_not_divide_by_zero():
    for field in ("nheads", "fpn_norm_groups", "proj_norm_groups"):
        with pytest.raises(ValueError, match=f"{field} must lie in"):
            BifitConfig(**{field: 0})
    with pytest.raises(ValueError, match="rel_coord must be true or false"):
        BifitConfig(rel_coord="yes")
