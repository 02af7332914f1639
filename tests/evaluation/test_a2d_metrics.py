"""A2D/JHMDB metrics against the official evaluate_a2d (COCOeval + a2d_eval), synthetic samples."""

import json
from pathlib import Path

import numpy as np
import pytest
from evaluation_fixture_builders import a2d_samples, rect

from bifit.evaluation import a2d_metrics

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "evaluation" / "a2d.json").read_text()
)
SAMPLES, STRING_IDS = a2d_samples()
KEYS = (
    "mAP",
    "AP50",
    "AP75",
    "overall_iou",
    "mean_iou",
    "P@0.5",
    "P@0.6",
    "P@0.7",
    "P@0.8",
    "P@0.9",
)


@pytest.mark.parametrize("ids", ["string_ids", "default_ids"])
def test_metrics_equal_the_official_evaluation(ids: str) -> None:
    reference = FIXTURE[ids]
    results = a2d_metrics(iter(SAMPLES), STRING_IDS if ids == "string_ids" else None)
    assert set(results) == {*KEYS, "mAP_top1", "AP50_top1", "AP75_top1"}
    for key in KEYS:
        assert results[key] == reference["all_queries"][key], key
    for key in ("mAP", "AP50", "AP75"):
        assert results[f"{key}_top1"] == reference["top1_only"][key], key


def test_sample_order_changes_ties_only_through_ids() -> None:
    # Same samples, ids 1..N given explicitly: identical to the default.
    explicit = a2d_metrics(SAMPLES, list(range(1, len(SAMPLES) + 1)))
    assert explicit == a2d_metrics(SAMPLES)


def _sample(gt: np.ndarray, preds: list[np.ndarray], scores: list[float]) -> tuple:
    return gt, np.stack(preds), np.asarray(scores, dtype=np.float32)


def test_top1_tie_goes_to_the_last_submitted() -> None:
    gt = rect((8, 8), 2, 2, 6, 6)
    wrong = rect((8, 8), 0, 0, 1, 1)
    first_wins = a2d_metrics([_sample(gt, [gt, wrong], [0.7, 0.7])])
    assert first_wins["mean_iou"] < 0.01
    last_wins = a2d_metrics([_sample(gt, [wrong, gt], [0.7, 0.7])])
    assert last_wins["mean_iou"] == 1.0
    # COCOeval sees both queries and, on equal scores, ranks the FIRST submitted higher.
    assert first_wins["mAP"] == pytest.approx(1.0)
    assert last_wins["mAP"] == pytest.approx(0.5)
    assert first_wins["mAP_top1"] == 0.0
    assert last_wins["mAP_top1"] == pytest.approx(1.0)


def test_precision_thresholds_are_strict_after_epsilon() -> None:
    # I/U = 3/5 exactly: (3 + 1e-6) / (5 + 1e-6) is just above 0.6 in float32, so it counts.
    gt = rect((1, 5), 0, 0, 1, 5)
    pred = rect((1, 5), 0, 0, 1, 3)
    results = a2d_metrics([_sample(gt, [pred], [0.9])])
    assert results["P@0.6"] == 1.0
    assert results["P@0.7"] == 0.0
    assert results["overall_iou"] == 0.6
    assert results["mean_iou"] == float(
        np.float32(3 + np.float32(1e-6)) / np.float32(5 + np.float32(1e-6))
    )


def test_bad_inputs_raise() -> None:
    gt = rect((4, 4), 0, 0, 2, 2)
    with pytest.raises(ValueError, match="binary"):
        a2d_metrics([(gt, np.full((1, 4, 4), 0.7), np.array([0.5]))])
    with pytest.raises(ValueError, match="1 masks and 2 scores"):
        a2d_metrics([(gt, gt[None], np.array([0.5, 0.4]))])
    with pytest.raises(ValueError, match="pred masks"):
        a2d_metrics([(gt, np.zeros((1, 4, 5)), np.array([0.5]))])
    with pytest.raises(ValueError, match="at least one sample"):
        a2d_metrics([])
    with pytest.raises(ValueError, match="unique"):
        a2d_metrics([(gt, gt[None], np.array([0.5]))] * 2, ["a", "a"])
