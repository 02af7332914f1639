"""Training state that never loses work: the checkpoints a run resumes from.

A training checkpoint is one file `checkpoint-<step>.pt` holding the model's state dict, the
optimiser, the LR scheduler, the loss scaler, the position in the run (optimiser step, epoch,
steps done in that epoch) and the random generators of every rank (Python, NumPy, torch, CUDA),
as tensors and plain types only, so `torch.load(weights_only=True)` reads it. It is written to a
temporary file in the same folder, flushed and fsynced, then renamed over the final name, so a
crash leaves either the old set of checkpoints or the new one, never a torn file. Only the
newest `keep_last` are kept. Reading and writing the files themselves, and every other kind of weight
file (initial weights, backbone weights, the final model), belong to `bifit.modeling.checkpoint`.
"""

from __future__ import annotations

import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling.checkpoint import atomic_save, read_torch_file, remove_atomic_save_temporaries

__all__ = [
    "capture_rng_state",
    "list_checkpoints",
    "load_latest_checkpoint",
    "load_training_checkpoint",
    "remove_checkpoint_temporaries",
    "restore_rng_state",
    "save_training_checkpoint",
]

_CHECKPOINT_NAME = r"checkpoint-(\d+)\.pt"
CHECKPOINT_PATTERN = re.compile(rf"^{_CHECKPOINT_NAME}$")


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
    return remove_atomic_save_temporaries(directory, _CHECKPOINT_NAME)


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
