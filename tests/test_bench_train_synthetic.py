"""The held-out scoring of benchmarks/bench_train_synthetic.py: grounding shares, the stride-4
ceiling and the evaluation of a saved model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import bifit
from bifit.data.synthetic import SceneConfig, generate_clip

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_synthetic.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_synthetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def box(t: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((t, 16, 16), dtype=bool)
    mask[:, y0:y1, x0:x1] = True
    return mask


def test_grounding_tells_landing_from_hedging(bench):
    a, b = box(2, 0, 4, 0, 4), box(2, 8, 12, 8, 12)
    assert bench.grounding(a, [a, b], referred=0) == (True, False)
    assert bench.grounding(b, [a, b], referred=0) == (False, False)
    both = a | b
    assert bench.grounding(both, [a, b], referred=0) == (True, True)
    assert bench.grounding(both, [a, b], referred=1) == (False, True)  # a tie goes to the first object
    assert bench.grounding(np.zeros_like(a), [a, b], referred=0) == (False, False)
    # Half of the second object is covered: still hedging.
    half = a | box(2, 8, 10, 8, 12)
    assert bench.grounding(half, [a, b], referred=0) == (True, True)


def test_a_perfect_stride_4_prediction_scores_high_but_not_one(bench):
    ceiling = bench.stride4_ceiling(4, num_frames=2, size=(64, 96))
    assert 0.8 < ceiling["J"] < 1.0 and 0.9 < ceiling["F"] <= 1.0


def test_evaluate_jf_scores_a_saved_model(bench, tiny_bert, tmp_path):
    torch.manual_seed(0)
    model = bifit.build_model(bifit.get_preset("tiny", num_queries=1), text_encoder=str(tiny_bert))
    bifit.save_pretrained(model, tmp_path / "model")
    scores = bench.evaluate_jf(tmp_path / "model", num_clips=3, num_frames=2, size=(64, 96), batch_size=2)
    alone = scores.pop("landed_alone")
    assert set(scores) == {"J", "F", "J&F", "landed", "hedged"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["J&F"] == pytest.approx((scores["J"] + scores["F"]) / 2)
    assert set(alone) <= {"colour", "shape", "size", "position", "motion"}
    assert all(0.0 <= v <= 1.0 for v in alone.values())


def test_attribute_kind_names_the_one_attribute_an_expression_states(bench):
    clip = generate_clip(np.random.default_rng(11), SceneConfig(num_frames=3, size=(64, 96)))
    kinds = {}
    for obj in clip.objects:
        for expression, descriptor in zip(obj.expressions, obj.descriptors):
            kind = bench.attribute_kind(obj, expression)
            if len(descriptor) > 1:
                assert kind is None
            else:
                name = descriptor[0][0]
                assert kind == ("position" if name in ("vertical", "horizontal") else name)
                kinds[expression] = kind
    assert kinds, "the clip should hold single-attribute expressions"
