"""Stopping a training run on SIGTERM or SIGINT without losing work.

Schedulers (SLURM, Kubernetes) and `torchrun` ask a process to stop with SIGTERM, a person with
Ctrl-C (SIGINT). While `StopSignals` is active either signal only records the request: the training
loop finishes the optimiser step it is in, writes a checkpoint and raises `TrainingInterrupted`, which
`bifit train` reports in one line with exit code 75. Under torchrun every rank takes part in
`agree_to_stop` after every step, so all ranks stop after the same step even when the signal reaches
them at different moments (or only one of them).

Further signals while the checkpoint is being written are ignored (torchrun forwards its own SIGINT
or SIGTERM to the workers after the terminal's; it sends SIGKILL 30 s later). The previous handlers
are put back when the context ends.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingInterrupted", "agree_to_stop"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; `--resume` continues from it.

    Attributes:
        signal_name: "SIGTERM" or "SIGINT" (the first signal received by any rank).
        step: optimiser steps done, all saved in the checkpoint.
        checkpoint: the checkpoint written (on rank 0; None on the other ranks).
    """

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None) -> None:
        where = f"; checkpoint {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"stopped by {signal_name} after step {step}{where}; continue with --resume")
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint


class StopSignals:
    """Context manager: SIGTERM and SIGINT set `received` instead of ending the process.

    Handlers are installed only from the main thread (Python allows no other) and only for signals
    that are not ignored (a job started with `nohup` or in the background keeps ignoring SIGINT).

    Args:
        announce: write one line to stderr when the first signal arrives (rank 0).
    """

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:
                continue
            self._previous[sig] = current
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            # None: a handler installed from C, which Python cannot restore; the default is closest.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Forked DataLoader workers inherit this handler; only the training process itself stops
        # (the workers must keep serving the step that is being finished).
        if os.getpid() != self._pid or self.received is not None:
            return
        self.received = signal.Signals(signum)
        if self.announce:
            # os.write, not print: a handler that interrupts a print to the same stream may not print.
            os.write(2, f"\nbifit train: {self.received.name} received; finishing this step and saving a checkpoint\n"
                     .encode())


def agree_to_stop(local: signal.Signals | None, device: torch.device) -> signal.Signals | None:
    """The stop request that every rank acts on: the lowest-numbered signal any rank received, or None.

    A collective operation when a process group is initialised: every rank must call it after
    every optimiser step. One process: `local` itself.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return local
    # A rank without a request sends a number above every signal's, so the minimum over the ranks is the
    # lowest signal number that any rank received.
    none = 1 << 20
    flag = torch.tensor([none if local is None else int(local)], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    value = int(flag.item())
    return None if value == none else signal.Signals(value)
