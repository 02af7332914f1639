"""The held-out scoring of benchmarks/bench_train_synthetic.py: grounding shares, the stride-4
ceiling and the evaluation of a saved model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bifit
from bifit.data.synthetic import COLOURS, SceneConfig, generate_clip

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_train_synthetic")


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


def expected_kind(expression: str) -> str | None:
    """The attribute a single-attribute expression states, read from its words."""
    words = expression.split()
    if len(words) == 2:
        return "shape"  # "the circle"
    if len(words) == 3 and words[2] == "shape":
        return "colour" if words[1] in COLOURS else "size" if words[1] in ("small", "big") else None
    rest = words[2:] if words[:2] == ["the", "shape"] else []
    if rest in (["moving"], ["standing", "still"]):
        return "motion"
    if len(rest) == 3 and rest[:2] in (["at", "the"], ["on", "the"]):
        return "position"  # "at the top left" states two attributes
    return None


def test_attribute_kind_names_the_one_attribute_an_expression_states(bench):
    seen = set()
    for seed in range(12):
        clip = generate_clip(np.random.default_rng(seed), SceneConfig(num_frames=3, size=(64, 96)))
        for obj in clip.objects:
            for expression in obj.expressions:
                kind = bench.attribute_kind(obj, expression)
                assert kind == expected_kind(expression), expression
                seen.add(kind)
    assert seen == {None, "colour", "shape", "size", "position", "motion"}
