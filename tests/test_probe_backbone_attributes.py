"""benchmarks/probe_backbone_attributes.py: the linear probe and the features it reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bifit

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("probe_backbone_attributes")


def test_linear_probe_reads_a_linear_attribute_and_not_noise(probe):
    rng = np.random.default_rng(0)
    labels = [str(v) for v in rng.choice(["a", "b", "c"], size=300, p=[0.5, 0.3, 0.2])]
    noise = rng.normal(size=(300, 8)).astype(np.float32)
    readable = noise.copy()
    readable[:, 0] += 8.0 * np.array([{"a": 0, "b": 1, "c": 2}[v] for v in labels])
    clear = probe.linear_probe(readable, labels)
    blind = probe.linear_probe(noise, labels)
    assert clear["accuracy"] > 0.95
    assert blind["accuracy"] < clear["majority"] + 0.15
    assert clear["majority"] == blind["majority"] == pytest.approx(np.mean(np.array(labels[210:]) == "a"))
    assert clear["objects"] == 300


def test_linear_probe_needs_objects_on_both_sides(probe):
    with pytest.raises(ValueError, match="both sides"):
        probe.linear_probe(np.zeros((1, 4), dtype=np.float32), ["a"])


def test_object_features_read_every_level_at_the_visible_objects(probe, tiny_bert):
    torch.manual_seed(0)
    config = bifit.get_preset("tiny", num_queries=1, num_frames=2)
    model = bifit.build_model(config, text_encoder=str(tiny_bert))
    features, labels = probe.object_features(model.eval(), num_clips=3, size=(64, 96), seed=1)
    count = len(labels["shape"])
    assert count > 0 and all(len(values) == count for values in labels.values())
    assert set(features) == set(probe.LEVELS)
    channels = {"stride4": 64, "stride8": config.hidden_dim, "stride16": config.hidden_dim, "stride32": config.hidden_dim}
    for level, x in features.items():
        assert x.shape == (count, channels[level])
        assert np.isfinite(x).all()


def test_probe_names_a_missing_model_directory(probe, tmp_path, capsys):
    assert probe.main([str(tmp_path / "nowhere"), "--output", str(tmp_path / "probe.json")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "probe.json").exists()
