"""The training loop on synthetic clips: the loss falls, metrics.jsonl holds every term, the final
model loads, and the CLI turns bad input into one clear message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import bifit
from bifit.cli import main
from bifit.training import TrainingConfig, train
from bifit.training.criterion import LOSS_NAMES



def tiny_run_config(text_encoder: Path, **changes) -> TrainingConfig:
    """The tiny model on 32x32 two-frame synthetic clips: a step takes a fraction of a second."""
    model = bifit.get_preset("tiny").replace(text_encoder=str(text_encoder), num_frames=2)
    settings = dict(
        model=model, data="synthetic", synthetic_samples=8, synthetic_size=(32, 32), epochs=1, batch_size=2,
        lr=1e-3, lr_backbone=1e-3, lr_text_fusion=1e-3, lr_drop=(), num_workers=0, device="cpu",
        disable_dropout=True, log_every=1, seed=0,
    )
    settings.update(changes)
    return TrainingConfig(**settings)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_metrics_hold_every_term(tiny_bert, tmp_path):
    # Four clips seen again and again: the loss on them must fall clearly.
    config = tiny_run_config(tiny_bert, synthetic_samples=4, batch_size=4, epochs=15, log_every=1)
    result = train(config, tmp_path / "run", progress=False)
    assert result.step == 15 and result.epoch == 15

    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 16))
    aux = [f"{name}_{i}" for i in range(config.model.dec_layers - 1) for name in LOSS_NAMES]
    for record in records:
        assert {"step", "epoch", "lr", "loss", "grad_norm", *LOSS_NAMES, *aux} <= set(record)
        assert all(math.isfinite(record[k]) for k in ("loss", "lr", *LOSS_NAMES, *aux))
        weighted = sum(w * record[k] for k, w in bifit.training.CriterionConfig().weight_dict(len(aux) // 5).items())
        assert record["loss"] == pytest.approx(weighted, rel=1e-5)
    assert [r["epoch"] for r in records] == list(range(15))
    assert all(r["lr"] == 1e-3 for r in records)
    first, last = records[0]["loss"], min(r["loss"] for r in records[-3:])
    assert last < 0.75 * first, [round(r["loss"], 3) for r in records]

    model = bifit.load_pretrained(result.final_dir)
    assert model.config == config.model
    assert (tmp_path / "run" / "train_config.json").is_file()
    assert TrainingConfig.from_json(tmp_path / "run" / "train_config.json") == config


def test_max_steps_lr_drop_and_checkpoint_positions(tiny_bert, tmp_path):
    # 8 clips / batch 2 = 4 steps per epoch; drop after epoch 1; stop after 6 steps (mid-epoch 1).
    config = tiny_run_config(tiny_bert, epochs=3, lr_drop=(1,), max_steps=6, save_every=0, log_every=2)
    result = train(config, tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run")
    assert [(r["step"], r["epoch"]) for r in records] == [(2, 0), (4, 0), (6, 1)]
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 1e-3, 1e-4])
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-00000004.pt", "checkpoint-00000006.pt"]
    state = torch.load(tmp_path / "run" / "checkpoints" / checkpoints[-1], weights_only=True)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (6, 1, 2)
    assert result.step == 6


def test_several_expressions_per_clip_train_from_one_backbone_pass(tiny_bert, tmp_path, monkeypatch):
    config = tiny_run_config(tiny_bert, synthetic_samples=4, batch_size=2, epochs=4, expressions_per_clip=3)
    backbone_frames = []
    original = bifit.BifitModel.encode_video

    def counting(self, videos, *args, **kwargs):
        features = original(self, videos, *args, **kwargs)
        backbone_frames.append(features.layer1.shape[0])
        return features

    monkeypatch.setattr(bifit.BifitModel, "encode_video", counting)
    result = train(config, tmp_path / "run", progress=False)
    assert result.step == 8
    # two clips of two frames per step, however many expressions they carry
    assert backbone_frames == [4] * 8
    records = read_metrics(tmp_path / "run")
    assert all(math.isfinite(r["loss"]) for r in records)
    assert min(r["loss"] for r in records[-2:]) < records[0]["loss"]
    with pytest.raises(ValueError, match="expressions_per_clip > 1 needs data=synthetic"):
        config.replace(data="ytvos")


def test_existing_run_needs_resume_or_overwrite(tiny_bert, tmp_path):
    config = tiny_run_config(tiny_bert, max_steps=1)
    train(config, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="finished training run; pass --resume .* or --overwrite"):
        train(config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="cannot resume .* different settings \\(lr"):
        train(config.replace(lr=5e-4), tmp_path / "run", resume=True, progress=False)
    result = train(config, tmp_path / "run", overwrite=True, progress=False)
    assert result.step == 1 and len(read_metrics(tmp_path / "run")) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "nope"], "unknown training preset 'nope'"),
        (["--preset", "ytvos_r50"], "--data ytvos needs --data-root"),
        (["--preset", "ytvos_r50", "--data-root", "/no/such/dir"], "--data-root not found: /no/such/dir"),
        (["--preset", "a2d_r50", "--data", "jhmdb"], "JHMDB-Sentences is evaluation-only"),
        (["--preset", "synthetic_tiny", "--set", "colour=red"], "unknown setting 'colour'"),
        (["--preset", "synthetic_tiny", "--set", "criterion.loss_dice=3"], "unknown criterion field 'loss_dice'"),
        (["--preset", "synthetic_tiny", "--set", "criterion.mask_focal_alpha=1.5"], "mask_focal_alpha must lie in [0, 1]"),
        (["--preset", "synthetic_tiny", "--set", "criterion.dice_loss_coef=-1"], "dice_loss_coef must be non-negative"),
        (["--preset", "synthetic_tiny", "--set", "criterion.cost_mask=much"], "criterion.cost_mask needs a number"),
        (["--preset", "synthetic_tiny", "--amp", "bf16", "--device", "cpu"], "--amp bf16 needs a CUDA device"),
        (["--preset", "synthetic_tiny", "--set", "synthetic_twin_prob=2"], "synthetic_twin_prob must lie in [0, 1]"),
        (["--preset", "synthetic_tiny"] + [f"--set=criterion.cost_{n}=0" for n in ("class", "bbox", "giou", "mask", "dice")],
         "at least one matching cost"),
    ],
)
def test_cli_bad_input_gives_one_clear_line(argv, message, tmp_path, capsys):
    code = main(["train", "--output-dir", str(tmp_path / "out"), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bifit train: error:") and message in err and "\n" not in err


def test_criterion_settings_reach_the_loss(tiny_bert, tmp_path, monkeypatch):
    """`--set criterion.<field>=<value>` is stored with the run and changes the loss the loop optimises."""
    from bifit.training import apply_overrides
    from bifit.training import loop

    config = apply_overrides(tiny_run_config(tiny_bert, max_steps=1),
                             ["criterion.dice_loss_coef=3", "criterion.mask_focal_alpha=0.5"])
    assert config.criterion.dice_loss_coef == 3.0 and config.criterion.mask_focal_alpha == 0.5
    assert TrainingConfig.from_dict(config.to_dict()) == config
    seen = []
    real = loop.build_criterion

    def spy(*args, **kwargs):
        criterion = real(*args, **kwargs)
        seen.append(criterion)
        return criterion

    monkeypatch.setattr(loop, "build_criterion", spy)
    train(config, tmp_path / "run", progress=False)
    (criterion,) = seen
    assert criterion.config == config.criterion
    assert criterion.num_classes == config.model.num_classes and criterion.size_divisibility == config.size_divisibility
    stored = json.loads((tmp_path / "run" / "train_config.json").read_text())["criterion"]
    assert stored["dice_loss_coef"] == 3.0 and stored["mask_focal_alpha"] == 0.5
    (record,) = read_metrics(tmp_path / "run")
    weights = config.criterion.weight_dict(sum(k.startswith("loss_dice_") for k in record))
    assert record["loss"] == pytest.approx(sum(w * record[k] for k, w in weights.items()), rel=1e-5)


def test_synthetic_twin_prob_reaches_the_scenes(tiny_bert):
    """`--set synthetic_twin_prob=...` is the training data's `SceneConfig.twin_prob`."""
    from bifit.training import apply_overrides
    from bifit.training.loop import build_train_dataset

    config = apply_overrides(tiny_run_config(tiny_bert), ["synthetic_twin_prob=0.35"])
    assert build_train_dataset(config).config.twin_prob == 0.35
    assert build_train_dataset(tiny_run_config(tiny_bert)).config.twin_prob == 0.0
    assert TrainingConfig.from_dict(config.to_dict()) == config


def test_cli_trains_and_refuses_to_clobber(tiny_bert, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--preset", "synthetic_tiny", "--output-dir", str(out), "--text-encoder", str(tiny_bert),
            "--max-steps", "1", "--batch-size", "1", "--device", "cpu", "--no-progress",
            "--set", "synthetic_size=[32, 32]", "--set", "num_frames=2"]
    assert main(argv) == 0
    assert "trained 1 steps" in capsys.readouterr().out
    assert bifit.load_pretrained(out / "final").config.text_encoder == str(tiny_bert)
    assert main(argv) == 2
    assert "already holds a finished training run" in capsys.readouterr().err
