"""`torchrun --nproc_per_node=2 -m bifit train` on CPU (gloo) ends with the same weights as one
process with the same global batch, and the sampler splits clips as that equality needs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bifit
from bifit.training import TrainingConfig, train
from bifit.training.distributed import ResumableDistributedSampler, seed_everything
from bifit.training.loop import build_training_model



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sampler_ranks_together_see_the_single_process_order():
    single = ResumableDistributedSampler(10, num_replicas=1, rank=0, seed=5)
    ranks = [ResumableDistributedSampler(10, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        for sampler in ranks:
            sampler.set_epoch(epoch)
        order = single.indices()
        assert sorted(order) == list(range(10))
        assert ranks[0].indices() == order[0::2] and ranks[1].indices() == order[1::2]
    single.set_epoch(0)
    first = single.indices()
    single.set_epoch(1)
    assert single.indices() != first  # a new permutation every epoch
    single.set_epoch(0, skip=4)
    assert list(single) == first[4:] and len(single) == 6
    # Uneven sizes are padded by wrapping so that every rank does the same number of steps.
    uneven = [ResumableDistributedSampler(5, num_replicas=2, rank=r, seed=0) for r in range(2)]
    assert [len(s) for s in uneven] == [3, 3]


# With activation checkpointing the ranks recompute inside DDP's backward, which must still all-reduce
# every gradient once.
@pytest.mark.parametrize("ddp_flags", [[], ["--activation-checkpointing"]], ids=["plain", "checkpointed"])
def test_two_processes_match_one_process_with_the_same_global_batch(tiny_bert, tmp_path, ddp_flags):
    # Dropout off: a step is then a deterministic function of the data, on any number of ranks. A large
    # AdamW epsilon: with the default 1e-8 the first steps move each weight by about lr * sign(grad), so a
    # near-zero gradient that rounds differently with one and two processes (summation order) moves its
    # weight 2 * lr the other way -- in up to 8% of some tensors, a measure of rounding, not of DDP.
    # With eps above most gradients' size the update is about proportional to the gradient, and rounding
    # stays rounding.
    overrides = {
        "data": "synthetic", "synthetic_samples": 8, "synthetic_size": [32, 32], "epochs": 1, "lr": 1e-3,
        "lr_backbone": 1e-3, "lr_text_fusion": 1e-3, "lr_drop": [], "num_workers": 0, "device": "cpu",
        "disable_dropout": True, "log_every": 1, "seed": 7, "max_steps": 2, "expressions_per_clip": 1,
        "adam_eps": 1e-3,
    }
    # The released backbone options (frozen batch norm and stem). One query: with several, two queries of
    # nearly equal matching cost can be matched differently on rounding, which changes the whole gradient.
    model = bifit.get_preset("tiny").replace(
        text_encoder=str(tiny_bert), num_frames=2, backbone_norm="frozen_bn", train_backbone_stem=False,
        num_queries=1,
    )
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    single_config = TrainingConfig(model=model, batch_size=2, **fields)
    single = train(single_config, tmp_path / "single", progress=False)

    src = Path(bifit.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    sets = [f"{k}={v}" for k, v in overrides.items()]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "bifit", "train", "--preset", "synthetic_tiny", "--output-dir", str(tmp_path / "ddp"),
        "--text-encoder", str(tiny_bert), "--batch-size", "1", "--no-progress", "--set", "model.num_frames=2",
        "--set", f"model.num_queries={model.num_queries}", "--set", "model.dropout=0.0", "--set", "model.backbone_norm=frozen_bn", "--set", "model.train_backbone_stem=false",
        *[arg for item in sets for arg in ("--set", item)], *ddp_flags,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = json.loads((tmp_path / "ddp" / "train_config.json").read_text())
    assert stored["activation_checkpointing"] is bool(ddp_flags)

    a = load_file(str(single.final_dir / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    seed_everything(overrides["seed"])
    initial = build_training_model(single_config).state_dict()
    assert a.keys() == b.keys() == initial.keys()
    # Compare what training changed: with one and with two processes every tensor's update is the same to
    # 0.1% (a rank that skipped the gradient all-reduce would be off by tens of percent).
    moved = 0
    for key in a:
        one, two = a[key].double() - initial[key].double(), b[key].double() - initial[key].double()
        # Allowance for storing the weights in float32: a few units in the last place of each weight.
        storage = 4 * torch.finfo(torch.float32).eps * initial[key].double().norm()
        assert (one - two).norm() <= 1e-3 * one.norm() + storage, key
        moved += int(one.norm() > 0)
    assert moved > 100  # training really changed the model
    ranks_lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    single_lines = (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
    assert len(ranks_lines) == len(single_lines) == 2  # rank 0 alone writes the log
    for x, y in zip(map(json.loads, single_lines), map(json.loads, ranks_lines)):
        assert x["step"] == y["step"] and x["loss"] == pytest.approx(y["loss"], rel=1e-5)
