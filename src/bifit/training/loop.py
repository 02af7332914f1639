"""The training loop, in the plain style of torchvision's detection references.

`train(config, output_dir)` runs one process of a (possibly distributed) training and leaves in
`output_dir`:

- `train_config.json`: the full `TrainingConfig`;
- `metrics.jsonl`: one JSON object per logged optimiser step (`step`, `epoch`, `lr`, `loss`, every
  loss term, `grad_norm`, `clips_per_s`, `time`), averaged over ranks;
- `checkpoints/checkpoint-<step>.pt`: training state to resume from (see `bifit.training.state`);
- `final/`: the trained model (`bifit.save_pretrained`), loadable with `bifit.load_pretrained`;
- `tensorboard/`: the same scalars, when TensorBoard is installed.

Each optimiser step does `accum_steps` forward/backward passes (the official recipe has one),
clips the gradient norm, steps AdamW; MultiStepLR steps after every epoch. The run is set up
(`_set_up`), resumed from its newest checkpoint where asked (`_resume`), then driven epoch by epoch
(`_train_one_epoch`) by `_train`.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ..data.collate import collate_expressions
from ..modeling.bifit import BifitModel
from ..modeling.checkpoint import load_backbone_weights, load_init_checkpoint, remove_save_leftovers, save_pretrained
from ..modeling.text_encoder import TextEncoder
from .config import TrainingConfig
from .criterion import build_criterion
from .distributed import (
    DistInfo,
    ResumableDistributedSampler,
    all_reduce_mean,
    cleanup_distributed,
    init_distributed,
    seed_everything,
)
from .optim import build_optimizer, build_scheduler
from .preemption import StopSignals, TrainingInterrupted, agree_to_stop
from .state import (
    capture_rng_state,
    load_latest_checkpoint,
    remove_checkpoint_temporaries,
    restore_rng_state,
    save_training_checkpoint,
)

__all__ = ["TrainResult", "build_train_dataset", "build_training_model", "set_train_mode", "train"]

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
TENSORBOARD_DIR = "tensorboard"
# Settings that may change when a run is resumed: they do not alter what has been computed so far.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "max_steps", "num_workers", "device", "log_every", "save_every", "keep_last", "data_root"}
)


@dataclass
class TrainResult:
    """What a finished (or stopped) `train` call leaves behind."""

    output_dir: Path
    step: int
    epoch: int
    final_dir: Path | None
    last_metrics: dict[str, float] = field(default_factory=dict)


def build_train_dataset(config: TrainingConfig) -> Dataset:
    """The training dataset named by `config.data`, yielding `(video, target)` items."""
    t = config.num_frames
    if config.data == "synthetic":
        from ..data.synthetic import SyntheticRVOS

        return SyntheticRVOS(
            config.synthetic_samples,
            num_frames=t,
            size=config.synthetic_size,
            seed=config.data_seed,
            expressions_per_clip=config.expressions_per_clip,
            twin_prob=config.synthetic_twin_prob,
        )
    if config.data == "jhmdb":
        raise ValueError(
            "JHMDB-Sentences is evaluation-only in the official protocol (the A2D-Sentences model is evaluated "
            "on it without training); train with --data a2d"
        )
    if not config.data_root:
        raise ValueError(f"--data {config.data} needs --data-root (the dataset folder)")
    root = Path(config.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    common = {"num_frames": t, "max_skip": config.max_skip, "seed": config.data_seed}
    if config.data == "ytvos":
        from ..data.ytvos import ref_ytvos_train

        return ref_ytvos_train(root, **common)
    if config.data == "davis":
        from ..data.davis import ref_davis_train

        return ref_davis_train(root, **common)
    from ..data.a2d import A2DSentencesDataset

    return A2DSentencesDataset(root, "train", **common)


def build_training_model(config: TrainingConfig) -> BifitModel:
    """A freshly initialised model with the pretrained text encoder, plus the configured initial
    weights (`backbone_weights`, then `init_checkpoint`)."""
    text_encoder = TextEncoder.from_pretrained(config.model.text_encoder)
    model = BifitModel(config.model, text_encoder)
    if config.backbone_weights:
        load_backbone_weights(model, config.backbone_weights)
    if config.init_checkpoint:
        report = load_init_checkpoint(model, config.init_checkpoint)
        if report["missing"]:
            warnings.warn(
                f"{len(report['missing'])} model tensors not in {config.init_checkpoint} keep their initial values "
                f"(e.g. {', '.join(report['missing'][:3])})",
                stacklevel=2,
            )
        if report["unexpected"]:
            warnings.warn(
                f"{len(report['unexpected'])} tensors of {config.init_checkpoint} have no place in the model "
                f"(e.g. {', '.join(report['unexpected'][:3])})",
                stacklevel=2,
            )
    return model


def set_train_mode(model: nn.Module, disable_dropout: bool) -> None:
    """`model.train()`, optionally with every dropout switched off.

    Dropout lives in `nn.Dropout` modules, in `nn.MultiheadAttention` (its attention dropout) and
    in the Hugging Face text encoder; in eval mode each of them is the identity and nothing else
    changes, while the model itself stays in training mode (it still returns `aux_outputs`).
    """
    model.train()
    if not disable_dropout:
        return
    for module in model.modules():
        if isinstance(module, (nn.Dropout, nn.MultiheadAttention)):
            module.eval()
        elif isinstance(module, TextEncoder):
            module.model.eval()


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def _to_float(outputs: Any) -> Any:
    """Mixed-precision outputs back to float32: the criterion's costs and losses need the range."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    return outputs


def _check_output_dir(output_dir: Path, config: TrainingConfig, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: an existing run needs `resume` (same settings) or `overwrite`."""
    config_path = output_dir / CONFIG_FILE
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"output dir {output_dir} exists and is not a directory")
    if not config_path.is_file():
        return
    if overwrite:
        return
    if not resume:
        state = "a finished training run" if (output_dir / FINAL_DIR).is_dir() else "a training run"
        raise FileExistsError(
            f"{output_dir} already holds {state}; pass --resume to continue it or --overwrite to start over"
        )
    saved = TrainingConfig.from_json(config_path).to_dict()
    current = config.to_dict()
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and current[k] != saved.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed[:4])
        raise ValueError(
            f"cannot resume {output_dir} with different settings ({details}); only "
            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )


def _clear_run(output_dir: Path) -> None:
    for name in (CHECKPOINT_DIR, FINAL_DIR, TENSORBOARD_DIR):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    remove_save_leftovers(output_dir / FINAL_DIR)
    for name in (CONFIG_FILE, METRICS_FILE):
        (output_dir / name).unlink(missing_ok=True)


def _remove_leftovers(output_dir: Path) -> None:
    """Temporaries of saves that a kill interrupted in an earlier run of `output_dir`."""
    removed = remove_checkpoint_temporaries(output_dir / CHECKPOINT_DIR) + remove_save_leftovers(output_dir / FINAL_DIR)
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        print(f"removed {len(removed)} leftover(s) of interrupted saves: {names}", flush=True)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after the checkpoint we resume from: those steps will be run again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by a crash
    path.write_text("".join(line + "\n" for line in kept))


def _open_tensorboard(directory: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(directory))


def _gather_rng(dist_info: DistInfo) -> list[dict[str, Any]]:
    state = capture_rng_state()
    if not dist_info.distributed:
        return [state]
    gathered: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(gathered, state)
    return gathered


class _MetricsLog:
    """metrics.jsonl, TensorBoard and the progress bar, on rank 0 only; every rank keeps the last record."""

    def __init__(self, output_dir: Path, enabled: bool, progress: bool, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.last_metrics: dict[str, Any] = {}
        self.path = output_dir / METRICS_FILE
        self.writer = _open_tensorboard(output_dir / TENSORBOARD_DIR) if enabled else None
        self.bar = tqdm(
            total=total, initial=initial, desc="train", dynamic_ncols=True, disable=not (enabled and progress)
        )

    def step(self, loss: float, lr: float, clips_per_s: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{clips_per_s:.2f}", refresh=False)

    def write(self, record: dict[str, Any]) -> None:
        """Log one record (every rank keeps it as `last_metrics`; rank 0 writes it)."""
        self.last_metrics = record
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def train(
    config: TrainingConfig,
    output_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train BIFIT as `config` describes, writing everything to `output_dir`.

    Run it as is for one process, or under `torchrun` for several (each process calls it).

    Args:
        config: the run (see `TrainingConfig` and the presets in `bifit.training.config`).
        output_dir: where logs, checkpoints and the final model go.
        resume: continue from the newest checkpoint in `output_dir` (starting afresh when there is
            none). On CPU an interrupted and resumed run ends with the same weights as an
            uninterrupted one.
        overwrite: delete a previous run in `output_dir` first.
        progress: show a progress bar (rank 0).
    Returns:
        the optimiser steps done, the epoch the next step would belong to, the `final/` model
        directory (on rank 0; None on the other ranks) and the last logged metrics.
    """
    output_dir = Path(output_dir)
    # A process group set up by the caller stays theirs; one we create is torn down at the end.
    owns_group = not (dist.is_available() and dist.is_initialized())
    dist_info = init_distributed(config.device)
    try:
        return _train(config, output_dir, dist_info, resume=resume, overwrite=overwrite, progress=progress)
    finally:
        if owns_group:
            cleanup_distributed()


@dataclass
class _Run:
    """Everything `_set_up` builds for one process of a training run."""

    config: TrainingConfig
    output_dir: Path
    dist_info: DistInfo
    dataset: Dataset
    sampler: ResumableDistributedSampler
    model: BifitModel
    ddp_model: nn.Module  # `model` itself, or its DistributedDataParallel wrapper
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    total_steps: int

    @property
    def device(self) -> torch.device:
        return self.dist_info.device


@dataclass
class _Position:
    """Where the run stands: optimiser steps done, and the epoch and step within it that come next."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0


@dataclass
class _Checkpoints:
    """The training checkpoints written so far: the step of the newest and (on rank 0) its path."""

    last_step: int
    last_path: Path | None = None

    def save(self, run: _Run, step: int, epoch: int, step_in_epoch: int) -> None:
        """Every rank takes part (the random states are gathered); rank 0 writes."""
        rng = _gather_rng(run.dist_info)
        if run.dist_info.is_main:
            state = {
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "step": step,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "world_size": run.dist_info.world_size,
                "rng": rng,
            }
            self.last_path = save_training_checkpoint(run.output_dir / CHECKPOINT_DIR, state, run.config.keep_last)
        else:
            self.last_path = None
        self.last_step = step


def _train(
    config: TrainingConfig, output_dir: Path, dist_info: DistInfo, *, resume: bool, overwrite: bool, progress: bool
) -> TrainResult:
    run, loaded = _set_up(config, output_dir, dist_info, resume=resume, overwrite=overwrite)
    position = _Position() if loaded is None else _resume(run, *loaded)
    del loaded
    if dist_info.is_main:
        _truncate_metrics(output_dir / METRICS_FILE, position.step)
    log = _MetricsLog(output_dir, dist_info.is_main, progress, run.total_steps, position.step)
    checkpoints = _Checkpoints(position.step)
    step, stop = position.step, None
    set_train_mode(run.model, config.disable_dropout)
    # From here on SIGTERM and SIGINT stop the run after the current step, with a checkpoint.
    with StopSignals(announce=dist_info.is_main) as signals, contextlib.closing(log):
        for epoch in range(position.epoch, config.epochs):
            if step >= run.total_steps or stop is not None:
                break
            first = position.step_in_epoch if epoch == position.epoch else 0
            step, stop = _train_one_epoch(run, epoch, first, step, log, signals, checkpoints)
            if step == (epoch + 1) * run.steps_per_epoch:
                # The epoch ran to its end: drop the LR as scheduled, then checkpoint the next epoch's start.
                run.scheduler.step()
                checkpoints.save(run, step, epoch + 1, 0)
        if checkpoints.last_step != step:
            checkpoints.save(run, step, step // run.steps_per_epoch, step % run.steps_per_epoch)
        if dist_info.distributed:
            dist.barrier()  # rank 0's checkpoint is on disk before any rank stops or goes on
        if stop is not None:
            raise TrainingInterrupted(stop.name, step, checkpoints.last_path)

        final_dir = None
        if dist_info.is_main:
            remove_save_leftovers(output_dir / FINAL_DIR)
            final_dir = save_pretrained(run.model, output_dir / FINAL_DIR, overwrite=True)
        if dist_info.distributed:
            dist.barrier()
    return TrainResult(output_dir, step, step // run.steps_per_epoch, final_dir, log.last_metrics)


def _set_up(
    config: TrainingConfig, output_dir: Path, dist_info: DistInfo, *, resume: bool, overwrite: bool
) -> tuple[_Run, tuple[Path, dict[str, Any]] | None]:
    """The output directory made ready, and everything a run needs built: dataset, sampler, model,
    criterion, optimiser, scheduler, loss scaler. Returns them with the newest checkpoint to resume from
    (its path and state; None when not resuming or there is none)."""
    device = dist_info.device
    if config.amp != "none" and device.type != "cuda":
        raise ValueError(f"--amp {config.amp} needs a CUDA device; this run is on {device}")
    # Bad data settings fail here, before anything is written or a model is built.
    dataset = build_train_dataset(config)
    _prepare_output_dir(output_dir, config, dist_info, resume=resume, overwrite=overwrite)

    # The same seed on every rank gives every rank the same initial weights; the per-rank seed
    # (official: seed + rank) then drives everything random during training.
    seed_everything(config.seed)
    loaded = load_latest_checkpoint(output_dir / CHECKPOINT_DIR) if resume else None
    # Resumed weights come from the checkpoint; the initial weights need not be read again.
    initial = config if loaded is None else config.replace(init_checkpoint=None, backbone_weights=None)
    model = build_training_model(initial)
    model.set_activation_checkpointing(config.activation_checkpointing)
    seed_everything(config.seed + dist_info.rank)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16")
    if loaded is not None:
        # Before the model moves: the checkpoint was read on the CPU.
        _load_state_dicts(loaded[1], model, optimizer, scheduler, scaler)
    model.to(device)
    _move_optimizer_state(optimizer, device)

    sampler = ResumableDistributedSampler(len(dataset), dist_info.world_size, dist_info.rank, seed=config.seed)
    steps_per_epoch, total_steps = _count_steps(config, sampler)

    criterion = build_criterion(
        config.criterion, num_classes=config.model.num_classes, size_divisibility=config.size_divisibility
    )
    ddp_model: nn.Module = model
    if dist_info.distributed:
        ddp_model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )
    run = _Run(
        config=config,
        output_dir=output_dir,
        dist_info=dist_info,
        dataset=dataset,
        sampler=sampler,
        model=model,
        ddp_model=ddp_model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        amp_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )
    return run, loaded


def _prepare_output_dir(
    output_dir: Path, config: TrainingConfig, dist_info: DistInfo, *, resume: bool, overwrite: bool
) -> None:
    """Check that `output_dir` may take this run, then (rank 0) clear it or remove the leftovers of
    interrupted saves, and record the config."""
    _check_output_dir(output_dir, config, resume, overwrite)
    if dist_info.distributed:
        dist.barrier()  # every rank has seen the old state before rank 0 changes it
    if dist_info.is_main:
        if overwrite:
            _clear_run(output_dir)
        elif resume:
            _remove_leftovers(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        config.save_json(output_dir / CONFIG_FILE)


def _count_steps(config: TrainingConfig, sampler: ResumableDistributedSampler) -> tuple[int, int]:
    """(optimiser steps per epoch, optimiser steps of the whole run) for this rank's share of the data."""
    steps_per_epoch = sampler.per_rank // config.batch_size // config.accum_steps
    if steps_per_epoch < 1:
        raise ValueError(
            f"an epoch of {sampler.size} clips is shorter than one optimiser step "
            f"({config.batch_size} x {sampler.num_replicas} ranks x {config.accum_steps} accumulation)"
        )
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return steps_per_epoch, total_steps


def _load_state_dicts(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """AdamW keeps its state beside the parameters; a loaded state is on the CPU. The step counts stay
    where they are, as AdamW keeps them."""
    for param_state in optimizer.state.values():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                param_state[key] = value.to(device)


def _resume(run: _Run, path: Path, state: dict[str, Any]) -> _Position:
    """Where the checkpoint at `path` (its weights and optimiser already loaded by `_set_up`) left the
    run, with every random generator put back as it was then."""
    position = _Position(int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"]))
    dist_info = run.dist_info
    if dist_info.is_main:
        print(f"resuming from {path} (step {position.step}, epoch {position.epoch})", flush=True)
    rng_states = state["rng"]
    if len(rng_states) == dist_info.world_size:
        restore_rng_state(rng_states[dist_info.rank])
    else:
        warnings.warn(
            f"the checkpoint holds random states of {len(rng_states)} ranks but this run has "
            f"{dist_info.world_size}; reseeding instead (the run stays valid but is not bit-identical)",
            stacklevel=3,
        )
        seed_everything(run.config.seed + dist_info.rank + position.step)
    return position


def _train_one_epoch(
    run: _Run,
    epoch: int,
    first_step: int,
    step: int,
    log: _MetricsLog,
    signals: StopSignals,
    checkpoints: _Checkpoints,
) -> tuple[int, signal.Signals | None]:
    """The optimiser steps of `epoch` from `first_step` on, until the epoch, the run (`run.total_steps`)
    or a stop request ends; logs every `log_every` steps and checkpoints every `save_every`.

    Args:
        step: optimiser steps done before this call.
    Returns:
        the optimiser steps done after it, and the signal that stopped it early (None when none did).
    """
    config, dist_info = run.config, run.dist_info
    batches = _epoch_batches(run.dataset, run.sampler, config, epoch, first_step, dist_info)
    clips_per_step = config.batch_size * config.accum_steps * dist_info.world_size
    for step_in_epoch in range(first_step, run.steps_per_epoch):
        if step >= run.total_steps:
            break
        started = time.perf_counter()
        terms = _optimizer_step(
            run.ddp_model, run.criterion, run.optimizer, run.scaler, batches, config, run.device, run.amp_dtype
        )
        step += 1
        clips_per_s = clips_per_step / max(time.perf_counter() - started, 1e-9)
        lr = run.optimizer.param_groups[0]["lr"]
        log.step(terms["loss"], lr, clips_per_s)
        if step % config.log_every == 0 or step == run.total_steps:
            reduced = all_reduce_mean(terms, run.device)
            record = {"step": step, "epoch": epoch, "lr": lr, **reduced, "clips_per_s": clips_per_s}
            log.write({**record, "time": time.time()})
        if config.save_every and step % config.save_every == 0 and step_in_epoch + 1 < run.steps_per_epoch:
            checkpoints.save(run, step, epoch, step_in_epoch + 1)
        # Every rank asks after every step (a collective); a request during the last step changes
        # nothing, as the run ends and saves anyway.
        stop = agree_to_stop(signals.received, run.device) if step < run.total_steps else None
        if stop is not None:
            return step, stop
    return step, None


def _epoch_batches(
    dataset: Dataset,
    sampler: ResumableDistributedSampler,
    config: TrainingConfig,
    epoch: int,
    first_step: int,
    dist_info: DistInfo,
) -> Iterator[tuple[list[torch.Tensor], list[str], list[dict[str, Any]], list[int]]]:
    """This rank's micro-batches of `epoch`, starting after `first_step` optimiser steps."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler.set_epoch(epoch, skip=first_step * config.accum_steps * config.batch_size)
    # A private generator: creating the loader must not draw from the global RNG, or a resumed run
    # would see different dropout masks than an uninterrupted one.
    generator = torch.Generator().manual_seed(config.seed + 1000 * epoch + dist_info.rank)
    loader = DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, config.batch_size, drop_last=True),
        collate_fn=collate_expressions,
        num_workers=config.num_workers,
        pin_memory=dist_info.device.type == "cuda",
        generator=generator,
        persistent_workers=False,
    )
    return iter(loader)


def _optimizer_step(
    model: nn.Module,
    criterion: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Iterator,
    config: TrainingConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """`accum_steps` forward/backward passes, gradient clipping and one AdamW step.

    Returns the loss terms averaged over the passes, plus `grad_norm`.
    """
    sums: dict[str, float] = {}
    optimizer.zero_grad(set_to_none=True)
    for micro in range(config.accum_steps):
        videos, captions, targets, caption_videos = next(batches)
        videos = [v.to(device, non_blocking=True) for v in videos]
        targets = [_to_device(t, device) for t in targets]
        valid_indices = None
        if "valid_indices" in targets[0]:  # A2D: only the annotated frame is decoded
            valid_indices = torch.cat([t["valid_indices"] for t in targets])
        # Gradients are all-reduced only on the last pass of the step.
        sync = micro == config.accum_steps - 1 or not isinstance(model, DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(videos, captions, size_divisibility=config.size_divisibility,
                                valid_indices=valid_indices, caption_videos=caption_videos)
            losses = criterion(_to_float(outputs), targets)
            loss = losses["loss"]
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"loss is {loss.item()}; stopping (terms: "
                    + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()) + ")"
                )
            scaler.scale(loss / config.accum_steps).backward()
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value.item() / config.accum_steps
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if config.clip_max_norm > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.clip_max_norm)
    else:
        grad_norm = torch.linalg.vector_norm(
            torch.stack([p.grad.detach().norm() for p in params if p.grad is not None])
        )
    scaler.step(optimizer)
    scaler.update()
    sums["grad_norm"] = float(grad_norm)
    return sums
