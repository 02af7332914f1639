"""`bifit predict davis` end to end on a tiny Ref-DAVIS17: per-annotator palette PNGs and J&F."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from predict_fixtures import (  # noqa: F401
    PALETTE,
    SHORT_SIDE,
    H,
    W,
    fake_rank,
    save_checkpoint,
    write_davis,
)

import bifit
from bifit.cli import main
from bifit.data.davis import davis_eval_videos, prepare_davis
from bifit.evaluation import evaluate_davis
from bifit.inference.core import load_frames
from bifit.inference.protocols import davis_palette
from bifit.inference.davis_predict import combine_objects

NUM_FRAMES = 5
CLIP = 3


@pytest.fixture(scope="module")
def checkpoint(module_tmp, tiny_bert) -> Path:
    return save_checkpoint(module_tmp / "tiny", tiny_bert)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("davis")
    davis, text = write_davis(root, NUM_FRAMES)
    return davis, prepare_davis(davis, text, root / "ref-davis")


def predict_args(data: tuple[Path, Path], checkpoint: Path, output: Path) -> list[str]:
    davis, ref = data
    return [
        "predict", "davis", "--data-root", str(ref), "--davis-root", str(davis), "--checkpoint", str(checkpoint),
        "--output", str(output), "--short-side", str(SHORT_SIDE), "--clip-length", str(CLIP), "--no-progress",
    ]


@pytest.fixture(scope="module")
def run(data, checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("davis_out")
    assert main(predict_args(data, checkpoint, output)) == 0
    return output


def official_ids(model, ref: Path, video: str, annotator: int, frames: list[str]) -> np.ndarray:
    """inference_davis.py for one annotator and one clip, one expression at a time: uint8 [T, H, W]."""
    meta = json.loads((ref / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"][video]
    expressions = meta["expressions"]
    num_obj = len(expressions) // 4
    clip, (height, width) = load_frames([ref / "valid" / "JPEGImages" / video / f"{f}.jpg" for f in frames], SHORT_SIDE)
    object_masks = []
    for obj in range(num_obj):
        with torch.no_grad():
            out = model([clip], [expressions[str(obj * 4 + annotator)]["exp"]])
        query = int(out["pred_logits"][0].sigmoid().mean(0).max(-1).values.argmax())
        masks = F.interpolate(out["pred_masks"][0][:, query][None], size=(height, width), mode="bilinear",
                              align_corners=False)
        object_masks.append(masks.sigmoid()[0])
    masks = torch.stack(object_masks)
    masks[masks < 0.5] = 0.0
    masks = torch.cat([0.1 * torch.ones(1, *masks.shape[1:]), masks])
    return masks.argmax(0).numpy().astype(np.uint8)


def test_official_layout_palette_pngs_equal_the_official_steps(run, data, checkpoint):
    _, ref = data
    model = bifit.load_pretrained(checkpoint)
    split = run / "valid"
    assert sorted(p.name for p in split.iterdir() if p.is_dir()) == ["anno_0", "anno_1", "anno_2", "anno_3"]
    frames = [f"{t:05d}" for t in range(NUM_FRAMES)]
    for k in range(4):
        assert sorted(p.name for p in (split / f"anno_{k}").iterdir() if p.is_dir()) == ["cows", "dogs"]
        for video, num_obj in (("dogs", 2), ("cows", 1)):
            ids = []
            for f in frames:
                with Image.open(split / f"anno_{k}" / video / f"{f}.png") as img:
                    assert img.mode == "P" and img.size == (W, H)
                    assert img.getpalette()[: len(PALETTE)] == PALETTE  # the annotations' own palette
                    ids.append(np.array(img))
            ids = np.stack(ids)
            assert ids.max() <= num_obj
            if video == "dogs" and k in (0, 3):
                for clip in (frames[:CLIP], frames[CLIP:]):  # clips of 3 then 2 frames
                    expected = official_ids(model, ref, video, k, clip)
                    np.testing.assert_array_equal(ids[[frames.index(f) for f in clip]], expected)


def test_each_annotator_evaluated_and_their_mean_reported(run, data):
    davis, _ = data
    split = run / "valid"
    summary = json.loads((split / "ref-davis_results.json").read_text())
    assert len(summary["annotators"]) == 4
    for k, result in enumerate(summary["annotators"]):
        assert (split / f"anno_{k}" / "global_results-val.csv").is_file()
        assert (split / f"anno_{k}" / "per-sequence_results-val.csv").is_file()
        again = evaluate_davis(davis, split / f"anno_{k}", "val", "unsupervised", write_csv=False)["global"]
        assert result == pytest.approx(again, nan_ok=True)
    for column, value in summary["mean"].items():
        assert value == pytest.approx(np.mean([r[column] for r in summary["annotators"]]))
    header, row = (split / "global_results-val.csv").read_text().splitlines()
    assert header.startswith("J&F-Mean,J-Mean") and row.split(",")[0] == f"{summary['mean']['J&F-Mean']:.5f}"


def test_two_ranks_then_rank0_evaluates(data, checkpoint, tmp_path, monkeypatch, run, capsys):
    barriers: list[int] = []
    fake_rank(monkeypatch, 1, 2, barriers)
    assert main(predict_args(data, checkpoint, tmp_path)) == 0
    assert sorted(p.name for p in (tmp_path / "valid" / "anno_0").iterdir()) == ["cows"]  # [dogs, cows][1::2]
    assert not (tmp_path / "valid" / "ref-davis_results.json").exists()
    fake_rank(monkeypatch, 0, 2, barriers)
    assert main(predict_args(data, checkpoint, tmp_path)) == 0
    assert barriers == [1, 0]
    assert "mean of the 4 annotators" in capsys.readouterr().out
    mine = json.loads((tmp_path / "valid" / "ref-davis_results.json").read_text())
    assert mine == json.loads((run / "valid" / "ref-davis_results.json").read_text())


def test_combine_objects_zeroes_below_half_and_prefers_the_first_on_ties():
    probs = torch.tensor([[[[0.49, 0.6, 0.7, 0.8]]], [[[0.3, 0.6, 0.9, 0.05]]]])  # [N=2, T=1, H=1, W=4]
    assert combine_objects(probs).tolist() == [[[0, 1, 2, 1]]]
    assert combine_objects(probs).dtype == torch.uint8


def test_default_palette_is_the_davis_colour_map():
    palette = davis_palette()
    assert len(palette) == 768
    assert palette[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    assert palette[-3:] == [224, 224, 192]


def test_missing_ground_truth_fails_before_predicting(data, checkpoint, tmp_path, capsys):
    args = predict_args(data, checkpoint, tmp_path / "o")
    args[args.index("--davis-root") + 1] = str(tmp_path / "nowhere")
    assert main(args) == 2
    assert "Annotations_unsupervised" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert len(davis_eval_videos(data[1])) == 2
