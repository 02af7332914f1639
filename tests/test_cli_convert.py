"""`bifit convert` as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bifit
from bifit.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def official_pth(module_tmp) -> Path:
    from seeded_weights import seeded_tensor

    reference = torch.load(FIXTURES / "official_model" / "reference.pt", weights_only=True)
    shared = reference["shared_keys"]
    state = {k: seeded_tensor(shared.get(k, k), s) for k, s in reference["state_dict_shapes"].items()}
    path = module_tmp / "ytvos_r50.pth"
    torch.save({"model": state, "optimizer": {}, "epoch": 9}, path)
    return path


def test_convert_writes_a_checkpoint_that_loads_without_the_text_encoder_source(official_pth, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", str(official_pth), str(out), "--text-encoder", str(FIXTURES / "tiny_roberta")]) == 0
    assert "wrote" in capsys.readouterr().out
    model = bifit.load_model(out)
    assert model.config == bifit.get_preset("bifit_r50").replace(text_encoder=str(FIXTURES / "tiny_roberta"))
    assert not model.training


def test_convert_refuses_to_overwrite_and_names_missing_files(official_pth, tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["convert", str(official_pth), str(out), "--text-encoder", str(FIXTURES / "tiny_roberta")])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    code = main(["convert", str(official_pth), str(out), "--text-encoder", str(FIXTURES / "tiny_roberta"), "--overwrite"])
    assert code == 2
    err = capsys.readouterr().err
    assert "is not a bifit checkpoint" in err and "keep.txt" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code = main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "x"), "--text-encoder", str(FIXTURES / "tiny_roberta")])
    assert code == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_a_model_builds_from_a_local_roberta_directory(tiny_roberta):
    model = bifit.build_model("tiny", text_encoder=str(tiny_roberta)).eval()
    assert model.resizer.fc.in_features == 48
    with torch.no_grad():
        out = model(torch.randn(1, 2, 3, 64, 64), ["a red circle"])
    assert out["pred_logits"].shape == (1, 2, 3, 1)
