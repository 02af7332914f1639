"""`bifit predict a2d|jhmdb` and `bifit evaluate a2d|jhmdb` end to end on tiny datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from predict_fixtures import (  # noqa: F401
    SHORT_SIDE,
    H,
    W,
    fake_rank,
    save_checkpoint,
    write_a2d,
    write_jhmdb,
)
from pycocotools import mask as mask_utils

import bifit
from bifit.cli import main
from bifit.data.a2d import read_a2d_masks
from bifit.evaluation import a2d_metrics
from bifit.inference.a2d_predict import (
    build_eval_dataset,
    ground_truth,
    official_batches,
    postprocess_masks,
)

A2D_IDS = ["v_teA_f_2_i_1", "v_teA_f_6_i_1", "v_teA_f_2_i_2", "v_teB_f_1_i_4"]  # MTTR order: per expression, per frame
JHMDB_IDS = ["v_girl_waving_f_1", "v_girl_waving_f_5", "v_man_running_f_1", "v_man_running_f_3"]


@pytest.fixture(scope="module")
def checkpoint(module_tmp, tiny_bert) -> Path:
    return save_checkpoint(module_tmp / "tiny", tiny_bert)


@pytest.fixture(scope="module")
def a2d_root(tmp_path_factory) -> Path:
    return write_a2d(tmp_path_factory.mktemp("a2d"))


@pytest.fixture(scope="module")
def jhmdb_root(tmp_path_factory) -> Path:
    return write_jhmdb(tmp_path_factory.mktemp("jhmdb"))


def predict_args(benchmark: str, root: Path, checkpoint: Path, output: Path, *extra: str) -> list[str]:
    return [
        "predict", benchmark, "--data-root", str(root), "--checkpoint", str(checkpoint), "--output", str(output),
        "--short-side", str(SHORT_SIDE), "--workers", "0", "--no-progress", *extra,
    ]


@pytest.fixture(scope="module")
def a2d_run(a2d_root, checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("a2d_out")
    assert main(predict_args("a2d", a2d_root, checkpoint, output)) == 0
    return output


def decode(prediction: dict) -> np.ndarray:
    seg = prediction["segmentation"]
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def test_a2d_predictions_hold_every_query_of_every_test_sample(a2d_run, checkpoint, a2d_root):
    predictions = json.loads((a2d_run / "predictions.json").read_text())
    q = bifit.load_pretrained(checkpoint).config.num_queries
    assert [p["image_id"] for p in predictions] == [i for i in A2D_IDS for _ in range(q)]
    assert all(p["category_id"] == 1 and 0 < p["score"] < 1 for p in predictions)
    assert all(p["segmentation"]["size"] == [H, W] for p in predictions)
    assert not list(a2d_run.glob("predictions.rank*"))

    # The first sample, recomputed with the official steps: centred 6-frame clip zero-padded to a
    # multiple of 32 (the official collate_fn), annotated frame kept after the backbone, all queries'
    # masks post-processed as A2DSentencesPostProcess does.
    dataset = build_eval_dataset("a2d", a2d_root, short_side=SHORT_SIDE)
    video, target = dataset[0]
    assert target["image_id"] == A2D_IDS[0] and video.shape[0] == 6
    model = bifit.load_pretrained(checkpoint)
    with torch.no_grad():
        out = model([video], [target["caption"]], size_divisibility=32, valid_indices=target["valid_indices"])
    assert out["pred_masks"].shape[-2:] == (64 // 4, 64 // 4)  # 40x61 input -> 64x64 canvas
    scores = out["pred_logits"][0, 0, :, 0].sigmoid()
    logits = out["pred_masks"][0, 0]  # [Q, h4, w4]
    up = F.interpolate(logits[None], size=(logits.shape[-2] * 4, logits.shape[-1] * 4), mode="bilinear",
                       align_corners=False)[0]
    h, w = target["size"].tolist()
    masks = F.interpolate((up.sigmoid() > 0.5)[:, :h, :w][:, None].float(), size=(H, W), mode="nearest")[:, 0]
    for i in range(q):
        assert predictions[i]["score"] == pytest.approx(float(scores[i]), abs=1e-6)
        np.testing.assert_array_equal(decode(predictions[i]), masks[i].bool().numpy())


def test_a2d_metrics_written_and_equal_to_a2d_metrics_on_the_predictions(a2d_run, a2d_root, capsys):
    metrics = json.loads((a2d_run / "metrics.json").read_text())
    predictions = json.loads((a2d_run / "predictions.json").read_text())
    gt = ground_truth("a2d", a2d_root)
    assert gt.ids == A2D_IDS
    samples = []
    for index, image_id in enumerate(gt.ids):
        preds = [p for p in predictions if p["image_id"] == image_id]
        samples.append((gt.read(index), np.stack([decode(p) for p in preds]), np.array([p["score"] for p in preds])))
    assert metrics == pytest.approx(a2d_metrics(samples, sample_ids=gt.ids), nan_ok=True)
    assert set(metrics) >= {"mAP", "mAP_top1", "overall_iou", "mean_iou", "P@0.5", "P@0.9", "AP50", "AP75"}

    out = a2d_run / "again.json"
    assert main(["evaluate", "a2d", "--data-root", str(a2d_root), "--predictions", str(a2d_run / "predictions.json"),
                 "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == metrics
    printed = capsys.readouterr().out
    assert "top-1 query only" in printed and "mAP over all queries" in printed


def test_a2d_ground_truth_is_the_instance_mask_at_original_size(a2d_root):
    gt = ground_truth("a2d", a2d_root)
    instances, masks = read_a2d_masks(a2d_root / "text_annotations" / "a2d_annotation_with_instances" / "teA" / "00002.h5")
    np.testing.assert_array_equal(gt.read(2), masks[instances.index(2)])
    assert gt.read(2).shape == (H, W) and gt.read(2)[14:23, 20:32].all() and gt.read(2).sum() == 9 * 12


def test_two_ranks_merge_into_sample_order(a2d_root, checkpoint, a2d_run, tmp_path, monkeypatch):
    barriers: list[int] = []
    fake_rank(monkeypatch, 1, 2, barriers)
    assert main(predict_args("a2d", a2d_root, checkpoint, tmp_path)) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.rank1-of-2.json"]
    fake_rank(monkeypatch, 0, 2, barriers)
    assert main(predict_args("a2d", a2d_root, checkpoint, tmp_path)) == 0
    assert barriers == [1, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "predictions.json"]
    assert json.loads((tmp_path / "predictions.json").read_text()) == json.loads(
        (a2d_run / "predictions.json").read_text()
    )


def test_jhmdb_predict_and_evaluate(jhmdb_root, checkpoint, tmp_path):
    assert main(predict_args("jhmdb", jhmdb_root, checkpoint, tmp_path, "--batch-size", "2")) == 0
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert sorted({p["image_id"] for p in predictions}) == JHMDB_IDS
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["mAP"] <= 1 and 0 <= metrics["mean_iou"] <= 1
    gt = ground_truth("jhmdb", jhmdb_root)
    assert gt.read(1).sum() == 12 * 24  # girl_waving frame 5: rows 8..19, cols 5..28

    # A perfect prediction file scores 1 everywhere.
    perfect = tmp_path / "perfect.json"
    perfect.write_text(json.dumps([
        {"image_id": i, "category_id": 1, "score": 0.9,
         "segmentation": {"size": [H, W], "counts": mask_utils.encode(np.asfortranarray(
             gt.read(n).astype(np.uint8)))["counts"].decode()}}
        for n, i in enumerate(gt.ids)
    ]))
    out = tmp_path / "perfect_metrics.json"
    assert main(["evaluate", "jhmdb", "--data-root", str(jhmdb_root), "--predictions", str(perfect),
                 "--output", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["mAP"] == pytest.approx(1.0) and scores["mean_iou"] == pytest.approx(1.0)
    assert scores["P@0.9"] == 1.0


def test_postprocess_crops_the_padding_before_resizing():
    # A 2x3 stride-4 map -> 8x12 canvas; the input was 6x9 (the rest is padding), the original 12x18.
    logits = torch.full((1, 1, 2, 3), -5.0)
    logits[0, 0, :, 2] = 5.0  # the right column: canvas columns 8..11 are positive, only 8 is unpadded
    (masks,) = postprocess_masks(logits, torch.tensor([[6, 9]]), torch.tensor([[12, 18]]))
    assert masks.shape == (1, 12, 18) and masks.dtype == bool
    canvas = F.interpolate(logits, size=(8, 12), mode="bilinear", align_corners=False).sigmoid() > 0.5
    assert canvas[0, 0, 0].tolist() == [False] * 8 + [True] * 4
    # Input column 8 -> original columns 16, 17 (without the crop it would be columns 12..17).
    assert masks[0, :, 16:].all() and not masks[0, :, :16].any()


def test_evaluation_rejects_incomplete_or_foreign_predictions(a2d_run, a2d_root, tmp_path, capsys):
    predictions = json.loads((a2d_run / "predictions.json").read_text())
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps([p for p in predictions if p["image_id"] != A2D_IDS[2]]))
    assert main(["evaluate", "a2d", "--data-root", str(a2d_root), "--predictions", str(partial)]) == 2
    assert "1 evaluation sample(s) have no prediction" in capsys.readouterr().err
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(predictions + [dict(predictions[0], image_id="v_x_f_1_i_1")]))
    assert main(["evaluate", "a2d", "--data-root", str(a2d_root), "--predictions", str(foreign)]) == 2
    assert "not evaluation samples" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"a": 1}')
    assert main(["evaluate", "a2d", "--data-root", str(a2d_root), "--predictions", str(tmp_path / "bad.json")]) == 2
    assert "JSON list" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("num_samples", "batch_size", "num_gpus", "expected"),
    [
        (7, 2, 1, [[0, 1], [2, 3], [4, 5], [6]]),
        # 3 GPUs: blocks of ceil(7 / 3) = 3, the last filled up with samples 0 and 1.
        (7, 2, 3, [[0, 1], [2], [3, 4], [5], [6, 0], [1]]),
        (4, 2, 4, [[0], [1], [2], [3]]),
        (3, 1, 2, [[0], [1], [2], [0]]),
        (5, 3, 1, [[0, 1, 2], [3, 4]]),
    ],
)
def test_official_batches_follow_the_official_samplers(num_samples, batch_size, num_gpus, expected):
    assert official_batches(num_samples, batch_size, num_gpus) == expected


def test_official_batches_reject_bad_arguments():
    for args in ((0, 1, 1), (3, 0, 1), (3, 1, 0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            official_batches(*args)


def test_batches_of_two_are_padded_together_to_a_multiple_of_32(a2d_root, checkpoint, tmp_path, monkeypatch):
    # Three official GPUs: blocks of ceil(4 / 3) = 2 samples, [0, 1], [2, 3], then [0, 1] again to fill the last.
    assert main(predict_args("a2d", a2d_root, checkpoint, tmp_path, "--batch-size", "2", "--official-gpus", "3")) == 0
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    q = bifit.load_pretrained(checkpoint).config.num_queries
    order = A2D_IDS + A2D_IDS[:2]
    assert [p["image_id"] for p in predictions] == [i for i in order for _ in range(q)]
    assert predictions[:2 * q] == predictions[4 * q :]  # the repeated batch is the same batch

    # The second batch, recomputed: both clips on one canvas rounded up to a multiple of 32.
    dataset = build_eval_dataset("a2d", a2d_root, short_side=SHORT_SIDE)
    (v2, t2), (v3, t3) = dataset[2], dataset[3]
    model = bifit.load_pretrained(checkpoint)
    with torch.no_grad():
        out = model([v2, v3], [t2["caption"], t3["caption"]], size_divisibility=32,
                    valid_indices=[t2["valid_indices"][0], t3["valid_indices"][0]])
    masks = postprocess_masks(out["pred_masks"][:, 0], torch.stack([t2["size"], t3["size"]]),
                              torch.stack([t2["orig_size"], t3["orig_size"]]))
    scores = out["pred_logits"][:, 0, :, 0].sigmoid()
    for b in range(2):
        for i in range(q):
            p = predictions[(2 + b) * q + i]
            assert p["score"] == pytest.approx(float(scores[b, i]), abs=1e-6)
            np.testing.assert_array_equal(decode(p), masks[b][i])

    # Split over two processes, the batches merge back into the official order.
    barriers: list[int] = []
    ranks = tmp_path / "ranks"
    for rank in (1, 0):
        fake_rank(monkeypatch, rank, 2, barriers)
        assert main(predict_args("a2d", a2d_root, checkpoint, ranks, "--batch-size", "2", "--official-gpus", "3")) == 0
    assert json.loads((ranks / "predictions.json").read_text()) == predictions
