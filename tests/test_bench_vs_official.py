"""benchmarks/bench_vs_official.py: its JSON (runs, medians, per-pair ratios, output differences),
on the tiny workloads and with two bifit sides (the official side needs the official checkout)."""

from __future__ import annotations

import json

import pytest
import torch

import bifit
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_vs_official")


def test_ratios_are_medians_of_per_pair_ratios_for_every_later_side(bench):
    runs = {
        "official": [{"latency_s": 10.0, "peak_rss_mib": 1000.0}, {"latency_s": 20.0, "peak_rss_mib": 1000.0},
                     {"latency_s": 12.0, "peak_rss_mib": 1200.0}],
        "bifit": [{"latency_s": 5.0, "peak_rss_mib": 400.0}, {"latency_s": 14.0, "peak_rss_mib": 500.0},
                  {"latency_s": 6.0, "peak_rss_mib": 600.0}],
        "bifit-fast": [{"latency_s": 2.5, "peak_rss_mib": 400.0}, {"error": "exit code 1"},
                       {"latency_s": 3.0, "peak_rss_mib": 300.0}],
    }
    summary = bench.summarise(runs, ["official", "bifit", "bifit-fast"])
    assert summary["median"]["official"]["latency_s"] == 12.0
    assert summary["median"]["bifit-fast"]["latency_s"] == 2.75  # the failed run does not count
    ratios = summary["ratios"]
    assert set(ratios) == {"bifit/official", "bifit-fast/official", "bifit-fast/bifit"}
    # Per pair 0.5, 0.7, 0.5: the median of the pairs, not the ratio of the medians (6 / 12).
    assert ratios["bifit/official"]["latency_pairs"] == [0.5, 0.7, 0.5]
    assert ratios["bifit/official"]["latency"] == 0.5
    assert ratios["bifit/official"]["peak_rss"] == 0.5
    assert ratios["bifit-fast/bifit"]["latency_pairs"] == [0.5, 0.5]  # pairs with a failed run are left out


def test_rss_growth_is_the_least_squares_slope_over_frame_counts(bench):
    workloads = {
        name: {"spec": {"frames": frames}, "median": {"a": {"peak_rss_mib": 1000.0 + 50.0 * frames}}}
        for name, frames in (("W3_12", 12), ("W3_24", 24), ("W3_48", 48))
    }
    growth = bench.rss_growth(workloads, ["a"], 360, 640)
    assert growth["a"]["rss_mib_per_frame"] == pytest.approx(50.0)
    assert growth["a"]["points"] == [(12, 1600.0), (24, 2200.0), (48, 3400.0)]
    # Frame, stride-4 backbone and mask features, encoder memory, mask logits at 360 x 640: ~33 MiB.
    assert 25 < growth["held_activations_mib_per_frame"] < 40


def test_output_differences_and_mask_iou(bench, tmp_path):
    masks = torch.full((1, 2, 5, 4, 4), -1.0)
    masks[..., :2, :] = 1.0  # 2 * 5 * 8 positive pixels
    a = {"pred_logits": torch.zeros(1, 2, 5, 1), "pred_boxes": torch.zeros(1, 2, 5, 4), "pred_masks": masks}
    b = {k: v.clone() for k, v in a.items()}
    b["pred_boxes"][0, 1, 3, 2] = 0.25
    b["pred_masks"][0, 0, 0, 2, 0] = 0.5  # one more positive pixel
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    diff = bench.compare_outputs(str(tmp_path / "a.pt"), str(tmp_path / "b.pt"))
    assert diff["pred_logits_max_abs"] == 0.0
    assert diff["pred_boxes_max_abs"] == 0.25
    assert diff["pred_masks_max_abs"] == 1.5
    assert diff["mask_pixels_differing"] == 1
    assert diff["mask_iou"] == pytest.approx(80 / 81)


def test_training_step_differences_compare_losses_and_gradient_norms(bench, tmp_path):
    torch.save({"loss": 2.0, "grad_norm": 4.0, "terms": {"loss_ce": 1.0, "loss_dice": 1.0}}, tmp_path / "a.pt")
    torch.save({"loss": 2.5, "grad_norm": 5.0, "terms": {"loss_ce": 1.0, "loss_dice": 1.5}}, tmp_path / "b.pt")
    diff = bench.compare_outputs(str(tmp_path / "a.pt"), str(tmp_path / "b.pt"))
    assert diff == {"loss_abs": 0.5, "loss_rel": 0.25, "loss_terms_max_abs": 0.5, "loss_terms_compared": 2,
                    "grad_norm_rel": 0.25}


def test_training_step_of_a_bifit_side_and_its_checkpointed_variant(bench, tmp_path, monkeypatch):
    """One child job run in this process: warm-up without an update, then a timed AdamW step; with
    activation checkpointing the same step."""
    spec = bench.TINY_WORKLOADS["W4"]
    inputs = bench.prepare_inputs("W4", spec, tmp_path, seed=0)
    checkpoint = tmp_path / "seeded.pth"
    torch.save({"model": bench.official_state_dict(torch.load(bench.REFERENCE, weights_only=True))}, checkpoint)
    enabled = []
    real = bifit.BifitModel.set_activation_checkpointing
    monkeypatch.setattr(bifit.BifitModel, "set_activation_checkpointing",
                        lambda self, on: (enabled.append(on), real(self, on))[1])
    steps = {}
    for side in ("bifit", "bifit-checkpointed"):
        job = {"side": side, "spec": spec, "threads": torch.get_num_threads(), "device": "cpu", "seed": 0,
               "checkpoint": str(checkpoint), "outputs": str(tmp_path / f"{side}.pt"), **inputs}
        result = bench.run_child(job)
        assert result["latency_s"] > 0 and result["peak_rss_mib"] > 0
        steps[side] = torch.load(tmp_path / f"{side}.pt", weights_only=True)
    assert enabled == [True]
    step = steps["bifit"]
    # Final layer and three auxiliary layers, five terms each, as the official weight dict.
    assert len(step["terms"]) == 20 and step["grad_norm"] > 0
    assert step["loss"] == pytest.approx(sum(w * step["terms"][k] for k, w in _official_weights().items()), rel=1e-5)
    assert steps["bifit-checkpointed"]["loss"] == pytest.approx(step["loss"], rel=1e-6)
    assert steps["bifit-checkpointed"]["grad_norm"] == pytest.approx(step["grad_norm"], rel=1e-5)


def test_variants_run_only_where_they_change_something(bench):
    train_step, forward = bench.TINY_WORKLOADS["W4"], bench.TINY_WORKLOADS["W1"]
    assert bench.side_runs("bifit-checkpointed", train_step) and not bench.side_runs("bifit-checkpointed", forward)
    assert bench.side_runs("bifit-fast", forward) and not bench.side_runs("bifit-fast", train_step)
    assert bench.side_tree("before-checkpointed") == "before" and bench.side_tree("before-fast") == "before"


def _official_weights() -> dict[str, float]:
    base = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_mask": 2.0, "loss_dice": 5.0}
    weights = dict(base)
    for i in range(3):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def test_end_to_end_json_with_two_trees(bench, tmp_path):
    """Two fresh processes per workload and pair, same sources: identical outputs, ratios near 1."""
    src = bench.REPO_ROOT / "src"
    output = tmp_path / "bench.json"
    bench.main(["--tiny", "--sides", "bifit", "again", "--tree", f"again={src}", "--workloads", "W1",
                "--pairs", "1", "--threads", "1", "--output", str(output)])
    report = json.loads(output.read_text())
    assert report["config"]["sides"] == ["bifit", "again"] and report["config"]["tiny"] is True
    w1 = report["workloads"]["W1"]
    assert w1["spec"] == bench.TINY_WORKLOADS["W1"]
    for side in ("bifit", "again"):
        (run,) = w1["runs"][side]
        assert run["latency_s"] > 0 and run["peak_rss_mib"] >= run["rss_before_mib"] - 1  # peak since the reset
        assert w1["median"][side]["latency_s"] == run["latency_s"]
    assert set(w1["ratios"]) == {"again/bifit"} and len(w1["ratios"]["again/bifit"]["latency_pairs"]) == 1
    diff = w1["differences"]["again vs bifit"]
    assert diff["pred_masks_max_abs"] == 0.0 and diff["pred_boxes_max_abs"] == 0.0 and diff["mask_iou"] == 1.0


def test_unknown_sides_and_missing_official_checkout_are_refused(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--sides", "bifit", "nowhere", "--workloads", "W1"])
    with pytest.raises(SystemExit):
        bench.main(["--sides", "official", "bifit", "--official-root", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main(["--tree", "official=/tmp", "--sides", "bifit"])


def test_dropout_is_switched_off_everywhere_a_side_keeps_it(bench):
    class SdpaAttention(torch.nn.Module):  # as transformers 4.x's RoBERTa: a float, no Dropout module
        def __init__(self):
            super().__init__()
            self.dropout_prob = 0.1

    model = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.MultiheadAttention(8, 2, dropout=0.1), SdpaAttention())
    bench._disable_dropout(model)
    assert (model[0].p, model[1].dropout, model[2].dropout_prob) == (0.0, 0.0, 0.0)
