"""SIGTERM and SIGINT during training: the current step finishes, a checkpoint is written, the run
stops with exit code 75, and `--resume` ends with the weights of an uninterrupted run. Under torchrun
every rank stops after the same step, even when only one of them got the signal."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bifit
import bifit.training.loop as loop_module
from bifit.cli import EXIT_TRAINING_STOPPED, build_parser
from bifit.commands.train import build_config
from bifit.training import TrainingConfig, TrainingInterrupted, train
from bifit.training.state import list_checkpoints, load_training_checkpoint

SRC = Path(bifit.__file__).resolve().parents[1]


def resume_config(text_encoder: Path, **changes) -> TrainingConfig:
    # As in test_resume: dropout on, so equal weights prove that the random states were saved too.
    model = bifit.get_preset("tiny").replace(text_encoder=str(text_encoder), num_frames=2, dropout=0.1)
    settings = dict(
        model=model, data="synthetic", synthetic_samples=6, synthetic_size=(32, 32), epochs=2, batch_size=2,
        lr=1e-3, lr_backbone=1e-3, lr_text_fusion=1e-3, lr_drop=(1,), num_workers=0, device="cpu",
        log_every=1, seed=3, max_steps=4,
    )
    settings.update(changes)
    return TrainingConfig(**settings)


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    different = [k for k in x if not torch.equal(x[k], y[k])]
    assert not different, different[:5]


def handlers() -> tuple:
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


class SignalNotHandled(Exception):
    pass


@pytest.fixture
def fallback_handlers():
    """Handlers that fail the test, rather than end pytest, should training not take the signal over."""
    def fail(signum, frame):
        raise SignalNotHandled(signal.Signals(signum).name)

    previous = [signal.signal(sig, fail) for sig in (signal.SIGTERM, signal.SIGINT)]
    yield
    for sig, handler in zip((signal.SIGTERM, signal.SIGINT), previous):
        signal.signal(sig, handler)


@pytest.fixture(scope="module")
def straight(tiny_bert, module_tmp) -> Path:
    """The uninterrupted run: 4 steps, 3 per epoch, an LR drop after the first epoch."""
    result = train(resume_config(tiny_bert), module_tmp / "run", progress=False)
    return result.final_dir


def signal_after_step(monkeypatch, signum: int, step: int) -> None:
    """Deliver `signum` to this process while optimiser step `step` runs (after its backward pass)."""
    original = loop_module._optimizer_step
    calls = []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(loop_module, "_optimizer_step", step_then_signal)


@pytest.mark.parametrize("signum, step", [(signal.SIGTERM, 2), (signal.SIGINT, 3)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(
    tiny_bert, straight, tmp_path, monkeypatch, capfd, fallback_handlers, signum, step
):
    # Step 2 is mid-epoch; step 3 ends the first epoch, so the LR drop must happen before the save.
    config = resume_config(tiny_bert)
    before = handlers()
    signal_after_step(monkeypatch, signum, step)
    with pytest.raises(TrainingInterrupted) as info:
        train(config, tmp_path / "run", progress=False)
    assert handlers() == before
    stopped = info.value
    assert stopped.signal_name == signal.Signals(signum).name and stopped.step == step
    assert stopped.checkpoint == tmp_path / "run" / "checkpoints" / f"checkpoint-{step:08d}.pt"
    assert list_checkpoints(tmp_path / "run" / "checkpoints")[-1] == stopped.checkpoint
    state = load_training_checkpoint(stopped.checkpoint)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (step, step // 3, step % 3)
    assert not (tmp_path / "run" / "final").exists()
    assert f"{signal.Signals(signum).name} received; finishing this step" in capfd.readouterr().err

    monkeypatch.undo()
    resumed = train(config, tmp_path / "run", resume=True, progress=False)
    assert resumed.step == 4
    assert_same_weights(straight, resumed.final_dir)
    assert handlers() == before


def test_a_run_that_ends_or_fails_leaves_the_signal_handlers_as_they_were(tiny_bert, tmp_path, fallback_handlers):
    before = handlers()
    train(resume_config(tiny_bert, max_steps=1), tmp_path / "done", progress=False)
    assert handlers() == before
    with pytest.raises(FileExistsError):
        train(resume_config(tiny_bert, max_steps=1), tmp_path / "done", progress=False)
    assert handlers() == before


CLI_ARGS = [
    "train", "--preset", "synthetic_tiny", "--batch-size", "2", "--no-progress", "--device", "cpu", "--seed", "3",
    "--set", "model.num_frames=2", "--set", "model.dropout=0.1", "--set", "synthetic_size=[32, 32]",
    "--set", "synthetic_samples=6", "--set", "num_workers=0", "--set", "log_every=1", "--set", "lr_drop=[1]",
    "--set", "epochs=400",
]


def env_with_src() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def wait_for_metrics(run: Path, process: subprocess.Popen, lines: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    path = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.communicate()[1][-2000:]}")
        if path.is_file() and len(path.read_text().splitlines()) >= lines:
            return
        time.sleep(0.05)
    raise AssertionError("training logged no step in time")


def test_sigterm_to_a_real_training_process_exits_75_and_resume_matches(tiny_bert, tmp_path):
    run = tmp_path / "run"
    argv = [*CLI_ARGS, "--output-dir", str(run), "--text-encoder", str(tiny_bert), "--max-steps", "1000"]
    process = subprocess.Popen([sys.executable, "-m", "bifit", *argv], env=env_with_src(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_metrics(run, process)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == EXIT_TRAINING_STOPPED, err[-3000:]
    last = err.strip().splitlines()[-1]
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    stopped_at = load_training_checkpoint(checkpoint)["step"]
    assert last == (f"bifit train: stopped by SIGTERM after step {stopped_at}; checkpoint {checkpoint}; "
                    "continue with --resume")
    assert "Traceback" not in err
    assert not (run / "final").exists()
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no torn temporary

    # Continue one step past the interruption; an uninterrupted run of as many steps must end equal.
    config = build_config(build_parser().parse_args(argv)).replace(max_steps=stopped_at + 1)
    resumed = train(config, run, resume=True, progress=False)
    straight = train(config, tmp_path / "straight", progress=False)
    assert resumed.step == straight.step == stopped_at + 1
    assert_same_weights(straight.final_dir, resumed.final_dir)
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, stopped_at + 2))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_with_rank(agent: int, rank: int, timeout: float = 60) -> int:
    """The pid of torchrun's worker process of the given rank (a child of the agent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
        for pid in children:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tiny_bert, tmp_path):
    run = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                "--master_addr=127.0.0.1"]
    argv = [*CLI_ARGS, "--output-dir", str(run), "--text-encoder", str(tiny_bert), "--batch-size", "1",
            "--set", "synthetic_samples=8"]
    process = subprocess.Popen([*torchrun, f"--master_port={free_port()}", "-m", "bifit", *argv,
                                "--max-steps", "1000"], env=env_with_src(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        rank1 = worker_with_rank(process.pid, 1)
        wait_for_metrics(run, process)
        os.kill(rank1, signal.SIGTERM)  # rank 0 gets no signal at all
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    # torchrun reports the exit code 75 of the first rank to leave as the job's failure, and may then end
    # the other with SIGTERM while it tears down (after the barrier: its part is done).
    assert process.returncode != 0
    assert re.search(r"exitcode\s*: 75", err), err[-3000:]
    stops = [line for line in err.splitlines() if "stopped by SIGTERM after step" in line]
    assert len(stops) == 1, err[-3000:]  # rank 0 speaks for both
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    state = load_training_checkpoint(checkpoint)
    assert f"after step {state['step']}; checkpoint {checkpoint}" in stops[0]
    assert state["world_size"] == 2 and len(state["rng"]) == 2

    resumed = subprocess.run([*torchrun, f"--master_port={free_port()}", "-m", "bifit", *argv, "--resume",
                              "--max-steps", str(state["step"] + 1)], env=env_with_src(), text=True,
                             capture_output=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoint} (step {state['step']}" in resumed.stdout
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, state["step"] + 2))
    assert (run / "final" / "model.safetensors").is_file()
