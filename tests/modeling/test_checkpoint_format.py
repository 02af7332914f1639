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


def test_overwrite_replaces_only_a_checkpoint_bifit_wrote(model, tmp_path):
    target = bifit.save_pretrained(model, tmp_path / "ckpt")
    (tmp_path / ".ckpt.old").mkdir()  # a folder of the user's with the name the replaced copy once took
    (tmp_path / ".ckpt.old" / "mine.txt").write_text("mine")
    assert bifit.save_pretrained(model, target, overwrite=True) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.old", "ckpt"]
    assert (tmp_path / ".ckpt.old" / "mine.txt").read_text() == "mine"
    bifit.load_pretrained(target)

    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"is not a bifit checkpoint \(it holds files a checkpoint does not \(notes.txt\)\)"):
        bifit.save_pretrained(model, target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"holds files a checkpoint does not \(Documents\)"):
        bifit.save_pretrained(model, home, overwrite=True)
    assert (home / "Documents").is_dir()
    other = tmp_path / "other_tool"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="it has no bifit config.json"):
        bifit.save_pretrained(model, other, overwrite=True)
    assert (other / "config.json").read_text() == "{}"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a checkpoint directory"):
        bifit.save_pretrained(model, tmp_path / "file", overwrite=True)


def test_overwrite_replaces_a_link_as_a_link(model, tmp_path):
    elsewhere = bifit.save_pretrained(model, tmp_path / "elsewhere")
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir() if p.is_file()}
    bifit.save_pretrained(model, tmp_path / "link", overwrite=True, weights="int8-per-channel")
    assert not (tmp_path / "link").is_symlink()
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir() if p.is_file()} == before


def test_demo_bundles_are_recognised_by_their_external_text_encoder(model, tmp_path):
    from bifit.modeling.checkpoint import is_demo_bundle

    assert is_demo_bundle(bifit.save_pretrained(model, tmp_path / "bundle", text_encoder_weights="external"))
    assert not is_demo_bundle(bifit.save_pretrained(model, tmp_path / "stored"))
    assert not is_demo_bundle(tmp_path / "missing")
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "config.json").write_text('["not", "an", "object"]')
    assert not is_demo_bundle(tmp_path / "torn")


def test_what_is_no_checkpoint_is_refused_before_unpickling(model, tmp_path):
    from bifit.modeling.checkpoint import CheckpointError, atomic_save, check_checkpoint_kind

    directory = bifit.save_pretrained(model, tmp_path / "ckpt")
    check_checkpoint_kind(directory)
    check_checkpoint_kind(atomic_save({"model": {}}, tmp_path / "weights.pth"))
    for part in ("model.safetensors", "config.json"):
        with pytest.raises(CheckpointError, match="is one file of a bifit checkpoint"):
            check_checkpoint_kind(directory / part)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        check_checkpoint_kind(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        check_checkpoint_kind(tmp_path / "missing.pth")
