"""Fast inference: the option reaches the model from Segmenter and `bifit segment --fast`, matrix
products run in bfloat16 while the sampling offsets and the mask head stay float32, and the outputs
stay close to the exact path. The CPU check is patched so that the tests do not depend on the
machine's instruction set (bfloat16 autocast runs everywhere, natively or not)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import bifit
from bifit.cli import main
from bifit.inference.predictor import Segmenter
from bifit.modeling import fast
from media import write_video


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(fast, "_cpu_has_bfloat16", lambda: True)


@pytest.fixture(scope="module")
def model(tiny_bert):
    torch.manual_seed(0)
    return bifit.build_model("tiny", text_encoder=str(tiny_bert)).eval()


def output_dtypes(model: bifit.BifitModel, run) -> dict[str, torch.dtype]:  # noqa: ANN001
    """Output dtypes of an FFN's first linear layer and of the mask controller during `run()`."""
    seen: dict[str, torch.dtype] = {}
    watched = {"ffn": model.transformer.encoder.layers[0].ffn.linear1, "controller": model.controller.layers[-1]}

    def recorder(name: str):  # noqa: ANN202
        # A forward hook that returns something replaces the module's output, so this one returns None.
        def hook(module, inputs, output) -> None:  # noqa: ANN001
            seen.setdefault(name, output.dtype)

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in watched.items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_fast_mode_runs_matrix_products_in_bfloat16_and_stays_close(model, bf16_cpu):
    torch.manual_seed(1)
    video = torch.randn(1, 3, 3, 64, 96)
    captions = ["the small red circle moving left"]
    with torch.no_grad():
        exact_dtypes = output_dtypes(model, lambda: model(video, captions))
        exact = model(video, captions)
        fast_model = fast.prepare_fast_inference(model)
        try:
            assert fast_model is model and model.autocast_dtype == torch.bfloat16
            fast_dtypes = output_dtypes(model, lambda: model(video, captions))
            approx = model(video, captions)
            model.train()
            training_dtypes = output_dtypes(model, lambda: model(video, captions))
        finally:
            model.autocast_dtype = None
            model.eval()
    assert exact_dtypes == {"ffn": torch.float32, "controller": torch.float32}
    assert fast_dtypes == {"ffn": torch.bfloat16, "controller": torch.float32}
    assert training_dtypes == {"ffn": torch.float32, "controller": torch.float32}  # training is unaffected
    probs = {k: out["pred_masks"].float().sigmoid() for k, out in (("exact", exact), ("fast", approx))}
    assert (probs["exact"] - probs["fast"]).abs().max() < 0.1
    a, b = probs["exact"] > 0.5, probs["fast"] > 0.5
    # Random tiny weights leave many probabilities near 0.5, so some boundary pixels flip; the accuracy
    # of a trained model is measured on the demo bundle (README), not here.
    assert (a & b).sum() / (a | b).sum() > 0.9
    torch.testing.assert_close(approx["pred_boxes"].float(), exact["pred_boxes"], atol=0.02, rtol=0)


def test_a_callers_autocast_still_applies_in_training(model):
    """Fast mode's switches leave mixed-precision training alone: the caller's autocast reaches the
    FFNs and the mask controller as it did before fast mode existed."""
    torch.manual_seed(2)
    video = torch.randn(1, 2, 3, 64, 96)
    model.train()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dtypes = output_dtypes(model, lambda: model(video, ["a red circle"]))
    finally:
        model.eval()
    assert dtypes == {"ffn": torch.bfloat16, "controller": torch.bfloat16}


def test_fast_mode_is_refused_where_it_would_be_slower(model, monkeypatch):
    monkeypatch.setattr(fast, "_cpu_has_bfloat16", lambda: False)
    assert fast.fast_inference_dtype("cpu") is None
    with pytest.raises(ValueError, match="native bfloat16"):
        fast.prepare_fast_inference(model)
    assert model.autocast_dtype is None
    monkeypatch.setattr(fast, "_cpu_has_bfloat16", lambda: True)
    assert fast.fast_inference_dtype("cpu") == torch.bfloat16


def test_segmenter_fast_option_prepares_its_model(tiny_bert, bf16_cpu):
    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    exact = Segmenter(bifit.build_model("tiny", text_encoder=str(tiny_bert)), short_side=None)
    assert exact.model.autocast_dtype is None and not exact.model.backbone.fold_frozen_norms
    assert not exact.model.backbone.channels_last
    torch.manual_seed(0)
    quick = Segmenter(bifit.build_model("tiny", text_encoder=str(tiny_bert)), short_side=None, fast=True)
    assert quick.model.autocast_dtype == torch.bfloat16 and quick.model.backbone.fold_frozen_norms
    assert quick.model.backbone.channels_last
    (a,), (b,) = exact.segment(frames, ["the red circle"]), quick.segment(frames, ["the red circle"])
    assert a.query == b.query
    assert (a.masks != b.masks).mean() < 0.05
    np.testing.assert_allclose(a.scores, b.scores, atol=0.02)


def test_segment_command_fast_flag(tiny_bert, tmp_path, bf16_cpu, monkeypatch):
    torch.manual_seed(0)
    checkpoint = bifit.save_pretrained(bifit.build_model("tiny", text_encoder=str(tiny_bert)), tmp_path / "ckpt")
    frames = np.random.default_rng(1).integers(0, 256, (3, 24, 34, 3), dtype=np.uint8)
    video = write_video(tmp_path / "clip.mp4", frames, fps=10)
    prepared = []
    original = fast.prepare_fast_inference
    monkeypatch.setattr("bifit.inference.predictor.prepare_fast_inference", lambda m: prepared.append(m) or original(m))
    summaries = {}
    for flag in ([], ["--fast"]):
        out = tmp_path / f"out{len(flag)}"
        argv = ["segment", str(video), "-t", "the red circle", "-c", str(checkpoint), "-o", str(out), "--quiet",
                "--short-side", "32", *flag]
        assert main(argv) == 0
        summaries[bool(flag)] = json.loads((out / "summary.json").read_text())
    assert len(prepared) == 1 and prepared[0].autocast_dtype == torch.bfloat16
    assert summaries[False]["fast"] is False and summaries[True]["fast"] is True
    exact, quick = (summaries[k]["expressions"][0]["frames"] for k in (False, True))
    assert [f["frame"] for f in exact] == [f["frame"] for f in quick]
    assert all(abs(e["score"] - q["score"]) < 0.02 for e, q in zip(exact, quick))


def test_cpu_check_reads_the_instruction_set_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(fast, "Path", lambda _: info)
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert fast._cpu_has_bfloat16()
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not fast._cpu_has_bfloat16()
    info.unlink()
    assert not fast._cpu_has_bfloat16()

