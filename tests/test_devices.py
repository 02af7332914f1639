"""One device resolver for every entry point: the names it accepts, the devices it refuses (with one
line from the CLI), and `--device auto` through `bifit segment`, `train` and the Segmenter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import bifit
from bifit.cli import main
from bifit.devices import resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("spec", ["auto", None, "cpu", " CPU ", "Auto", torch.device("cpu")])
def test_cpu_names_resolve_to_the_cpu_without_cuda(no_cuda, spec):
    assert resolve_device(spec) == torch.device("cpu")


def test_cuda_names_pick_the_gpu_they_mean(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device(None, local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"'cuda:2' means GPU 2, but this machine has 2 \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="'cuda' means GPU 5"):
        resolve_device("cuda", local_rank=5)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "auto-cuda", "CUDA:1"])
def test_cuda_without_cuda_is_refused_by_name(no_cuda, spec):
    if spec == "auto-cuda":
        assert resolve_device("auto") == torch.device("cpu")  # auto falls back; an explicit GPU does not
        return
    with pytest.raises(ValueError, match=f"device '{spec.lower()}' requested but this machine has"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["tpu:7", "cuda:x", "cuda:-1", "cuda:", "gpu", "", "cuda:0:1", 3])
def test_malformed_names_are_refused(spec):
    with pytest.raises(ValueError, match="unknown device|a device must be a name") as info:
        resolve_device(spec)
    assert "auto, cpu, cuda, cuda:N or mps" in str(info.value)


def test_mps_is_checked(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'mps' requested"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("MPS") == torch.device("mps")


@pytest.fixture(scope="module")
def checkpoint(tiny_bert, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = bifit.build_model("tiny", text_encoder=str(tiny_bert))
    return bifit.save_pretrained(model, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 34, 3), dtype=np.uint8)).save(path)
    return path


def test_segment_runs_with_device_auto(checkpoint, image, tmp_path, no_cuda):
    out = tmp_path / "out"
    code = main(["segment", str(image), "-t", "the red circle", "-c", str(checkpoint), "-o", str(out),
                 "--device", "auto", "--short-side", "32", "--quiet"])
    assert code == 0
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize("device, message", [
    ("tpu:7", "unknown device 'tpu:7'"),
    ("cuda:x", "unknown device 'cuda:x'"),
    ("cuda", "device 'cuda' requested but this machine has"),
])
def test_segment_refuses_bad_devices_in_one_line_before_writing(checkpoint, image, tmp_path, capsys, no_cuda,
                                                                device, message):
    out = tmp_path / "out"
    code = main(["segment", str(image), "-t", "the red circle", "-c", str(checkpoint), "-o", str(out),
                 "--device", device, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bifit segment: error:") and message in err and "\n" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["frame.png"]


@pytest.mark.parametrize("command", [
    ["train", "--preset", "synthetic_tiny", "--no-progress"],
    ["demo", "--clips", "1"],
    ["pretrain-backbone", "--preset", "synthetic_tiny", "--steps", "1", "--no-progress"],
])
def test_other_commands_refuse_bad_devices_in_one_line(command, tmp_path, capsys, no_cuda):
    target = ["--output-dir" if command[0] == "train" else "--output", str(tmp_path / "out")]
    if command[0] == "pretrain-backbone":
        target = ["--output", str(tmp_path / "backbone.pth")]
    code = main([*command, *target, "--device", "cuda:x"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "unknown device 'cuda:x'" in err and "\n" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "backbone.pth").exists()


def test_loaders_and_segmenter_take_the_same_names(checkpoint, no_cuda):
    assert bifit.load_pretrained(checkpoint, device="auto").device == torch.device("cpu")
    assert bifit.Segmenter(checkpoint, device=None).device == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu:7'"):
        bifit.Segmenter(checkpoint, device="tpu:7")
    with pytest.raises(ValueError, match="unknown device 'tpu:7'"):
        bifit.load_model(checkpoint, device="tpu:7")


def test_segment_with_the_bundled_model_runs_with_device_auto(tmp_path, no_cuda):
    from bifit.assets import default_checkpoint, example_expressions, example_video

    out = tmp_path / "out"
    code = main(["segment", str(example_video()), "-t", example_expressions()[0], "-o", str(out),
                 "--device", "auto", "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"] == str(default_checkpoint())
    assert summary["num_frames"] > 0 and len(summary["expressions"][0]["frames"]) == summary["num_frames"]


@pytest.mark.parametrize("spec", ["auto", "cpu", " CPU "])
def test_demo_takes_the_device_names_of_the_resolver(spec, tmp_path, capsys, no_cuda):
    code = main(["demo", "--clips", "1", "--frames", "2", "--output", str(tmp_path / "out"), "--device", spec])
    assert code == 0, capsys.readouterr().err
    assert "on cpu" in capsys.readouterr().out


@pytest.mark.parametrize("spec, error", [("auto", None), ("cpu", None), ("cuda:1", "requested but this machine has"),
                                         ("mps", "device 'mps' requested"), ("cuda:x", "unknown device 'cuda:x'")])
def test_app_resolves_its_device_with_the_one_resolver(spec, error, no_cuda, monkeypatch):
    import argparse

    from bifit.commands.app import build_segmenter

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    args = argparse.Namespace(checkpoint=None, text_encoder=None, device=spec, short_side=None, clip_length=None,
                              max_long_side=4096)
    if error is None:
        segmenter, _ = build_segmenter(args)
        assert segmenter.device == torch.device("cpu")
    else:
        with pytest.raises(ValueError, match=error):
            build_segmenter(args)
