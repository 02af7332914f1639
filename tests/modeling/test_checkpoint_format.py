"""Our checkpoint format's compact options: external text encoder and int8 weights."""

from __future__ import annotations

import json

import pytest
import torch

import bifit
from bifit.modeling.checkpoint import read_pretrained_config


@pytest.fixture(scope="module")
def model(tiny_bert):
    torch.manual_seed(0)
    return bifit.build_model("tiny", text_encoder=str(tiny_bert)).eval()


def test_external_text_encoder_is_left_out_and_loaded_from_its_source(model, tmp_path):
    target = bifit.save_pretrained(model, tmp_path / "ckpt", text_encoder_weights="external")
    assert not (target / "text_encoder").exists()
    from safetensors.torch import load_file

    assert not any(k.startswith("text_encoder.") for k in load_file(str(target / "model.safetensors")))
    loaded = bifit.load_pretrained(target)
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    assert read_pretrained_config(target)["text_encoder_weights"] == "external"


def test_int8_weights_are_four_times_smaller_and_within_half_a_step(model, tmp_path):
    full = bifit.save_pretrained(model, tmp_path / "full")
    small = bifit.save_pretrained(model, tmp_path / "small", weights="int8-per-channel", extra={"note": "x"})
    assert (small / "model.safetensors").stat().st_size < 0.3 * (full / "model.safetensors").stat().st_size
    assert json.loads((small / "config.json").read_text())["note"] == "x"
    loaded = bifit.load_pretrained(small)
    for name, value in model.state_dict().items():
        step = value.abs().max() / 127 if value.ndim >= 2 and value.is_floating_point() else 0.0
        assert torch.allclose(loaded.state_dict()[name].to(value.dtype), value, atol=float(step) / 2 + 1e-7), name


def test_unknown_storage_options_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match="text_encoder_weights"):
        bifit.save_pretrained(model, tmp_path / "a", text_encoder_weights="elsewhere")
    with pytest.raises(ValueError, match="weights"):
        bifit.save_pretrained(model, tmp_path / "b", weights="int4")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_missing_int8_scale_is_named(model, tmp_path):
    from safetensors.torch import load_file, save_file

    target = bifit.save_pretrained(model, tmp_path / "q", weights="int8-per-channel")
    state = load_file(str(target / "model.safetensors"))
    victim = next(k for k in state if k.endswith(":scale"))
    del state[victim]
    save_file(state, str(target / "model.safetensors"))
    with pytest.raises(bifit.CheckpointError, match="has no"):
        bifit.load_pretrained(target)
