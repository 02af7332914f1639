"""Per-frame J and F against the official DAVIS-2017 toolkit (db_eval_iou, db_eval_boundary)."""

import json
from pathlib import Path

import numpy as np
import pytest
from evaluation_fixture_builders import frame_cases, rect

from bifit.evaluation import (
    boundary_map,
    contour_accuracy,
    disk_kernel,
    region_similarity,
    sequence_statistics,
)
from bifit.evaluation.metrics import pairwise_frame_scores

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "evaluation" / "davis_frames.json").read_text()
)
REFERENCE = {case["name"]: case for case in FIXTURE["cases"]}
CASES = frame_cases()


def test_every_case_has_a_reference() -> None:
    assert sorted(REFERENCE) == sorted(case["name"] for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_j_and_f_equal_the_toolkit(case: dict) -> None:
    reference = REFERENCE[case["name"]]
    assert region_similarity(case["gt"], case["pred"], case["void"]) == reference["J"]
    assert (
        contour_accuracy(case["gt"], case["pred"], case["void"], case["bound_th"]) == reference["F"]
    )


@pytest.mark.parametrize("radius", list(FIXTURE["disk_kernels"]))
def test_disk_kernel_equals_skimage_disk(radius: str) -> None:
    expected = np.array(
        [[int(c) for c in row] for row in FIXTURE["disk_kernels"][radius]], dtype=np.uint8
    )
    kernel = disk_kernel(float(radius))
    assert kernel.dtype == np.uint8
    np.testing.assert_array_equal(kernel, expected)


def test_boundary_ignores_the_image_border() -> None:
    mask = rect((6, 8), 0, 0, 3, 8)  # top three rows, touching three borders
    expected = np.zeros((6, 8), dtype=bool)
    expected[2, :-1] = True  # only the inner edge; the last column is never compared eastwards
    expected[2, -1] = True  # ... but southwards it is
    np.testing.assert_array_equal(boundary_map(mask), expected)
    assert not boundary_map(np.ones((5, 5))).any()


def test_pairwise_scores_equal_single_calls() -> None:
    case = next(c for c in CASES if c["name"] == "void_part")
    gt = np.stack([case["gt"], case["pred"], np.zeros_like(case["gt"])])
    pred = np.stack([case["pred"], case["gt"]])
    j_values, f_values = pairwise_frame_scores(gt, pred, case["void"])
    for p in range(2):
        for g in range(3):
            assert j_values[p, g] == region_similarity(gt[g], pred[p], case["void"])
            assert f_values[p, g] == contour_accuracy(gt[g], pred[p], case["void"])


def test_sequence_statistics_by_hand() -> None:
    # T = 5: bins are frames 0-1, 1-2, 2-3, 3-4; decay = mean(1, .8) - mean(.4, .2).
    mean, recall, decay = sequence_statistics(np.array([1.0, 0.8, 0.6, 0.4, 0.2]))
    assert mean == pytest.approx(0.6)
    assert recall == pytest.approx(0.6)
    assert decay == pytest.approx(0.6)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        region_similarity(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        contour_accuracy(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="void"):
        contour_accuracy(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((3, 4)))


def test_mean_j_and_f_averages_the_frame_measures_over_a_clip() -> None:
    from bifit.evaluation import contour_accuracy, mean_j_and_f, region_similarity

    gt = np.zeros((3, 20, 20), dtype=bool)
    gt[:, 5:15, 5:15] = True
    pred = gt.copy()
    pred[1] = False  # one frame missed entirely
    pred[2, 5:15, 5:10] = False  # one frame half found
    j, f = mean_j_and_f(gt, pred)
    assert j == pytest.approx(np.mean([region_similarity(g, p) for g, p in zip(gt, pred)]))
    assert f == pytest.approx(np.mean([contour_accuracy(g, p) for g, p in zip(gt, pred)]))
    assert j == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert mean_j_and_f(gt, gt) == (1.0, 1.0)
