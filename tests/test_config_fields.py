"""The configuration dataclasses read and write JSON through one generic conversion (ConfigFields):
nested configs become dicts, tuples lists, and both come back as they were."""

import json

import pytest

from bifit import BifitConfig, get_preset
from bifit.training import CriterionConfig, TrainingConfig, get_training_preset


@pytest.mark.parametrize(
    "config",
    [get_preset("tiny"), get_preset("bifit_r50"), CriterionConfig(mask_focal_alpha=0.9), get_training_preset("synthetic_tiny")],
    ids=["tiny", "bifit_r50", "criterion", "synthetic_tiny"],
)
def test_json_round_trip_restores_the_config(config, tmp_path):
    path = tmp_path / "config.json"
    config.save_json(path)
    stored = json.loads(path.read_text())
    assert all(not isinstance(v, tuple) for v in stored.values())
    assert type(config).from_json(path) == config


def test_nested_configs_and_tuples_are_rebuilt_from_plain_json():
    data = get_training_preset("synthetic_tiny").to_dict()
    assert isinstance(data["model"], dict) and isinstance(data["criterion"], dict)
    assert data["synthetic_size"] == [96, 128] and data["model"]["fpn_sr_ratios"] == [8, 4, 2, 1]
    config = TrainingConfig.from_dict(json.loads(json.dumps(data)))
    assert isinstance(config.model, BifitConfig) and isinstance(config.criterion, CriterionConfig)
    assert config.synthetic_size == (96, 128) and config.model.fpn_sr_ratios == (8, 4, 2, 1)
    assert config.lr_drop == (7,) and config.max_steps is None


def test_unknown_and_bad_fields_are_refused():
    with pytest.raises(ValueError, match="unknown TrainingConfig fields: colour"):
        TrainingConfig.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="unknown CriterionConfig fields: loss_dice"):
        TrainingConfig.from_dict({"criterion": {"loss_dice": 3}})
    with pytest.raises(ValueError, match="mask_focal_alpha must lie in"):
        CriterionConfig.from_dict({"mask_focal_alpha": 2})
