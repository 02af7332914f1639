"""Our criterion and matcher against numbers produced by the official ReferFormer/BIFIT criterion.

The fixture comes from `scripts/make_criterion_fixture.py` (official SetCriterion + HungarianMatcher
with the released options, run on CPU in float32).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bifit.training import CriterionConfig, build_criterion

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "criterion" / "reference.pt"
CASES = ("ytvos", "ties", "a2d", "multiclass")
TOL = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _run(case: dict, dtype: torch.dtype = torch.float32):
    """Our losses on the case's inputs, with gradients; layers ordered aux 0..2, final."""
    num_classes = case["outputs"][0]["pred_logits"].shape[-1]
    criterion = build_criterion(num_classes=num_classes)
    leaves = [
        {k: v.detach().to(dtype, copy=True).requires_grad_(True) for k, v in layer.items()} for layer in case["outputs"]
    ]
    outputs = {**leaves[-1], "aux_outputs": leaves[:-1]}
    losses = criterion(outputs, case["targets"])
    losses["loss"].backward()
    return criterion, leaves, losses


@pytest.mark.parametrize("name", CASES)
def test_loss_terms_match_official(reference: dict, name: str) -> None:
    case = reference[name]
    _, _, losses = _run(case)
    assert list(losses) == list(case["losses"])  # official names and order, plus "loss"
    for key, expected in case["losses"].items():
        torch.testing.assert_close(losses[key].detach(), expected, atol=TOL, rtol=0, msg=key)


@pytest.mark.parametrize("name", CASES)
def test_gradients_match_official(reference: dict, name: str) -> None:
    case = reference[name]
    _, leaves, _ = _run(case)
    for layer, (ours, theirs) in enumerate(zip(leaves, case["grads"])):
        for key in ("pred_logits", "pred_boxes", "pred_masks"):
            torch.testing.assert_close(ours[key].grad, theirs[key], atol=TOL, rtol=0, msg=f"layer {layer} {key}")


@pytest.mark.parametrize("name", CASES)
def test_matched_queries_match_official(reference: dict, name: str) -> None:
    case = reference[name]
    num_classes = case["outputs"][0]["pred_logits"].shape[-1]
    matcher = build_criterion(num_classes=num_classes).matcher
    for layer, expected in zip(case["outputs"], case["matched"]):
        assert matcher(layer, case["targets"]).tolist() == expected.tolist()


def test_ties_pick_the_first_query(reference: dict) -> None:
    case = reference["ties"]
    criterion = build_criterion()
    final = case["outputs"][-1]
    costs = criterion.matcher.cost_matrix(final, criterion.prepare_targets(final, case["targets"]))
    # sample 0: all queries equal; sample 1: queries 1 and 3 equal and best
    assert torch.equal(costs[0], costs[0, :1].expand(5))
    assert costs[1, 1] == costs[1, 3] == costs[1].min()
    assert criterion.matcher(final, case["targets"]).tolist() == [0, 1]


def test_float64_outputs_give_the_same_losses(reference: dict) -> None:
    case = reference["ytvos"]
    _, leaves, losses = _run(case, torch.float64)
    assert losses["loss"].dtype == torch.float64
    torch.testing.assert_close(losses["loss"].float().detach(), case["losses"]["loss"], atol=1e-4, rtol=0)
    torch.testing.assert_close(leaves[-1]["pred_masks"].grad.float(), case["grads"][-1]["pred_masks"], atol=TOL, rtol=0)


def test_fixture_covers_the_edge_cases(reference: dict) -> None:
    ytvos = reference["ytvos"]["targets"]
    assert ytvos[0]["masks"].shape[-2:] != ytvos[1]["masks"].shape[-2:]  # padding matters
    assert ytvos[0]["valid"].tolist() == [1, 0, 1] and not ytvos[0]["masks"][1].any()  # absent object
    assert ytvos[1]["valid"].tolist() == [1, 0, 1] and ytvos[1]["masks"][1].any()  # 1-pixel-wide object
    assert all(t["masks"].shape[0] == 1 for t in reference["a2d"]["targets"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_outputs_with_cpu_targets_match_official(reference: dict) -> None:
    case = reference["ytvos"]
    leaves = [{k: v.detach().to("cuda", copy=True).requires_grad_(True) for k, v in layer.items()}
              for layer in case["outputs"]]
    losses = build_criterion()({**leaves[-1], "aux_outputs": leaves[:-1]}, case["targets"])
    losses["loss"].backward()
    for key, expected in case["losses"].items():
        torch.testing.assert_close(losses[key].detach().cpu(), expected, atol=TOL, rtol=0, msg=key)
    torch.testing.assert_close(leaves[-1]["pred_masks"].grad.cpu(), case["grads"][-1]["pred_masks"], atol=TOL, rtol=0)
