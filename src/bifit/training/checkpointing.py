"""Training checkpoints that never lose work, and initial weights for fine-tuning.

A training checkpoint is one file `checkpoint-<step>.pt` holding the model's state dict, the
optimiser, the LR scheduler, the loss scaler, the position in the run (optimiser step, epoch,
steps done in that epoch) and the random generators of every rank (Python, NumPy, torch, CUDA),
as tensors and plain types only, so `torch.load(weights_only=True)` reads it. It is written to a
temporary file in the same folder, flushed and fsynced, then renamed over the final name, so a
crash leaves either the old set of checkpoints or the new one, never a torn file. Only the
newest `keep_last` are kept.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..modeling.checkpoint import read_torch_file

__all__ = [
    "atomic_save",
    "capture_rng_state",
    "list_checkpoints",
    "load_backbone_weights",
    "load_init_checkpoint",
    "load_latest_checkpoint",
    "load_training_checkpoint",
    "remove_checkpoint_temporaries",
    "restore_rng_state",
    "save_training_checkpoint",
]

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")
# What `atomic_save` leaves of a checkpoint when the process is killed mid-write: the temporary file
# that tempfile.mkstemp named `.<name>.<8 random characters>.tmp`.
CHECKPOINT_TEMPORARY_PATTERN = re.compile(r"^\.checkpoint-\d+\.pt\.[a-z0-9_]{8}\.tmp$")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save(obj)` to `path` through a fsynced temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            # Writes through a file handle (a full disk) do not say which file failed; name the target.
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    _fsync_dir(path.parent)
    return path


def capture_rng_state() -> dict[str, Any]:
    """This process's random generators as tensors and plain types (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state`: put every generator back where it was."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Training checkpoints in `directory`, oldest first (by step)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def remove_checkpoint_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint saves that were killed mid-write in `directory`.

    Only plain files named exactly as `atomic_save` names a checkpoint's temporary are removed
    (`.checkpoint-<step>.pt.<8 characters>.tmp`); call it only where no save is under way.

    Returns:
        the files removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if CHECKPOINT_TEMPORARY_PATTERN.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def save_training_checkpoint(directory: str | Path, state: dict[str, Any], keep_last: int) -> Path:
    """Write `state` (which must hold an int `step`) as `directory/checkpoint-<step>.pt` atomically,
    then delete all but the newest `keep_last` checkpoints. Temporaries of earlier, interrupted saves
    are deleted first; a failed write (a full disk) leaves the earlier checkpoints as they were."""
    directory = Path(directory)
    remove_checkpoint_temporaries(directory)  # first: on a full disk their space may be what this save needs
    path = atomic_save(state, directory / f"checkpoint-{int(state['step']):08d}.pt")
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, read with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: {path}")
    state = read_torch_file(path, "training checkpoint")
    required = ("model", "optimizer", "scheduler", "step", "epoch", "step_in_epoch", "rng")
    missing = [key for key in required if key not in state] if isinstance(state, dict) else list(required)
    if missing:
        raise ValueError(f"{path} is not a bifit training checkpoint (missing {', '.join(missing)})")
    return state


def load_latest_checkpoint(directory: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable training checkpoint in `directory`, or None when there is none.

    An unreadable newest file (which atomic writes should make impossible, but disks fail) is
    skipped with a warning in favour of the one before it.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_training_checkpoint(path)
        except ValueError as exc:
            warnings.warn(f"skipping unreadable checkpoint: {exc}", stacklevel=2)
    return None


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet state dict (`.pth`) into `model.backbone`.

    Every convolution and batch-norm tensor of the four stages and the stem must be present with the
    backbone's shape; the classifier (`fc.*`) and `num_batches_tracked` counters are ignored.
    """
    from ..modeling.checkpoint import CheckpointError, check_finite, state_dict_differences

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    state = read_torch_file(path, "torchvision state dict")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    check_finite(state, path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    body = model.backbone.body
    expected = body.state_dict()
    wanted = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    missing, unexpected, mismatched = state_dict_differences(expected, wanted)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{path} does not fit the {model.config.backbone} backbone: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, mis-shaped {mismatched[:4]}"
        )
    body.load_state_dict(wanted)


def load_init_checkpoint(model: nn.Module, path: str | Path, drop_class_heads: bool = True) -> dict[str, list[str]]:
    """Initialise `model` from an official `.pth` or a bifit checkpoint directory, for fine-tuning.

    As the official `--pretrained_weights`, the class heads are dropped (`drop_class_heads`) and the
    rest is loaded non-strictly, so a Ref-COCO-pretrained ReferFormer checkpoint fills every module
    it shares with BIFIT. Shapes must agree for every tensor that is loaded.

    Returns:
        `{"missing": [...], "unexpected": [...]}`: model parameters left as they were and
        checkpoint tensors that have no place in the model.
    """
    from ..modeling.checkpoint import CheckpointError, load_pretrained, official_key_to_bifit, read_official_state_dict

    path = Path(path)
    if path.is_dir():
        # Through the loader, so that compact checkpoints (int8 weights, external text encoder) work too.
        state = load_pretrained(path).state_dict()
    else:
        official = read_official_state_dict(path)
        state = {}
        for key, value in official.items():
            # The shared box head is listed twice officially; its twin carries the same tensors.
            if key.startswith("transformer.decoder.bbox_embed."):
                continue
            state[official_key_to_bifit(key)] = value
    if drop_class_heads:
        state = {k: v for k, v in state.items() if not k.startswith("class_embed.")}
    expected = model.state_dict()
    mismatched = [
        f"{k}: {list(v.shape)} vs {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if mismatched:
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(mismatched[:6]))
    unexpected = sorted(
        k for k in state if k not in expected and not k.endswith(("position_ids", "token_type_ids"))
    )
    loadable = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(loadable, strict=False)
    missing = sorted(k for k in expected if k not in loadable)
    return {"missing": missing, "unexpected": unexpected}
