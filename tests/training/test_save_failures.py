"""Saves that fail: a process killed mid-save leaves temporaries that `--resume` and the next save remove
(only bifit's own), and a disk that fills up during a save is one line while the last good checkpoint
stays as it was."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from full_disk import fill_disk

import bifit
from bifit.cli import main
from bifit.modeling.checkpoint import remove_save_leftovers
from bifit.training.state import (
    CHECKPOINT_PATTERN,
    list_checkpoints,
    load_training_checkpoint,
    remove_checkpoint_temporaries,
    save_training_checkpoint,
)

SRC = Path(bifit.__file__).resolve().parents[1]

TRAIN_ARGS = [
    "train", "--preset", "synthetic_tiny", "--batch-size", "2", "--no-progress", "--device", "cpu", "--seed", "3",
    "--set", "model.num_frames=2", "--set", "synthetic_size=[32, 32]", "--set", "synthetic_samples=6",
    "--set", "num_workers=0", "--set", "log_every=1", "--set", "lr_drop=[1]", "--set", "save_every=1",
    "--max-steps", "2",
]

# Runs `bifit ARGS...` with one file-system call replaced so that the process SIGKILLs itself at the
# moment a save would become visible: what a power cut or the OOM killer leaves behind.
KILL_AT = """
import os, pathlib, signal, sys
target = sys.argv[1]
real_replace, real_rename = os.replace, pathlib.Path.rename
def replace(src, dst, *args, **kwargs):
    if os.path.basename(str(dst)) == target:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
def rename(self, dst):
    if os.path.basename(str(dst)) == target:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(self, dst)
os.replace, pathlib.Path.rename = replace, rename
from bifit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_killed_at(target: str, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILL_AT, target, *argv], env=env, capture_output=True, text=True,
                          timeout=300)


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def not_checkpoints(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not CHECKPOINT_PATTERN.match(p.name))


def last_line(capsys) -> str:
    # The text encoder's loader draws a progress bar on stderr before bifit's own line.
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_leftovers_of_killed_saves_are_removed_and_nothing_else(tiny_bert, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*TRAIN_ARGS, "--output-dir", str(run), "--text-encoder", str(tiny_bert)]

    # 1. Killed while the checkpoint of step 2 is written: its temporary stays, step 1's checkpoint is whole.
    killed = run_killed_at("checkpoint-00000002.pt", argv)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = run / "checkpoints"
    [temporary] = not_checkpoints(checkpoints)
    assert temporary.startswith(".checkpoint-00000002.pt.") and temporary.endswith(".tmp")
    assert [p.name for p in list_checkpoints(checkpoints)] == ["checkpoint-00000001.pt"]
    # Files that only look alike, and a link to a file outside the run: none of them is bifit's to remove.
    outside = tmp_path / "precious.tmp"
    outside.write_text("mine")
    keep = [".checkpoint-notes.tmp", ".checkpoint-00000007.pt.tmp", "checkpoint-00000002.pt.abcdefgh.tmp",
            ".checkpoint-00000002.pt.ABCDEFGH.tmp"]
    for name in keep:
        (checkpoints / name).write_text("user file")
    (checkpoints / ".checkpoint-00000003.pt.abcdefgh.tmp").symlink_to(outside)
    keep.append(".checkpoint-00000003.pt.abcdefgh.tmp")
    (run / ".final.notes").mkdir()

    # 2. Resumed, and killed while final/ is moved into place: the resume removed the checkpoint temporary,
    # the kill leaves final/'s temporary folder.
    killed = run_killed_at("final", [*argv, "--resume"])
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert f"removed 1 leftover(s) of interrupted saves: {temporary}" in killed.stdout
    assert not_checkpoints(checkpoints) == sorted(keep)
    [final_temporary] = [name for name in hidden(run) if name != ".final.notes"]
    assert final_temporary.startswith(".final.") and (run / final_temporary / "model.safetensors").is_file()
    assert not (run / "final").exists()

    # 3. Resumed again: final/'s temporary goes, the run ends as an uninterrupted one does.
    assert main([*argv, "--resume"]) == 0
    assert f"removed 1 leftover(s) of interrupted saves: {final_temporary}" in capsys.readouterr().out
    assert hidden(run) == [".final.notes"] and not_checkpoints(checkpoints) == sorted(keep)
    assert outside.read_text() == "mine"
    assert main([*TRAIN_ARGS, "--output-dir", str(tmp_path / "straight"), "--text-encoder", str(tiny_bert)]) == 0
    a = load_file(str(run / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_next_save_removes_checkpoint_temporaries_and_save_pretrained_leftovers_are_named_exactly(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    stale = directory / ".checkpoint-00000004.pt.k2j_9x0a.tmp"
    stale.write_bytes(b"torn")
    state = {"model": {"w": torch.ones(1)}, "optimizer": {}, "scheduler": {}, "step": 5, "epoch": 0,
             "step_in_epoch": 5, "rng": []}
    save_training_checkpoint(directory, state, keep_last=2)
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint-00000005.pt"]
    assert remove_checkpoint_temporaries(tmp_path / "absent") == []

    for name in (".final.ab_cd123", ".final.old.k2j_x9ab", ".final.old", ".final.toolongname", ".other.abcdefgh", "final.abcdefgh"):
        (tmp_path / name).mkdir()
    (tmp_path / ".final.zzzzzzzz").symlink_to(tmp_path / "checkpoints")
    removed = remove_save_leftovers(tmp_path / "final")
    assert sorted(p.name for p in removed) == [".final.ab_cd123", ".final.old.k2j_x9ab"]
    assert (tmp_path / "checkpoints" / "checkpoint-00000005.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".final.old", ".final.toolongname", ".final.zzzzzzzz", ".other.abcdefgh", "checkpoints", "final.abcdefgh"]


def fill_disk_at(monkeypatch, nth: int) -> None:
    """The disk fills up while the nth training checkpoint is written, 10 MB into it (where, in most
    places, torch.save raises a RuntimeError instead of the OSError)."""
    seen = []

    def nth_checkpoint(name: str) -> bool:
        if os.path.basename(name).startswith(".checkpoint-"):
            seen.append(name)
            return len(seen) == nth
        return False

    fill_disk(monkeypatch, capacity=10 << 20, fails=nth_checkpoint)


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_loses_nothing(tiny_bert, tmp_path, capsys,
                                                                            monkeypatch):
    run = tmp_path / "run"
    argv = [*TRAIN_ARGS, "--output-dir", str(run), "--text-encoder", str(tiny_bert)]
    fill_disk_at(monkeypatch, nth=2)
    assert main(argv) == 2
    target = run / "checkpoints" / "checkpoint-00000002.pt"
    assert last_line(capsys) == f"bifit train: error: {target}: No space left on device"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-00000001.pt"]
    assert load_training_checkpoint(run / "checkpoints" / "checkpoint-00000001.pt")["step"] == 1

    monkeypatch.undo()  # space freed: the run continues from its last good checkpoint
    assert main([*argv, "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert bifit.load_pretrained(run / "final").config.num_frames == 2


def test_a_full_disk_while_final_is_written_is_one_line_and_leaves_no_temporary(tiny_bert, tmp_path, capsys,
                                                                                monkeypatch):
    run = tmp_path / "run"
    real_write = Path.write_bytes

    def write_bytes(self, data):
        if self.name == "model.safetensors":
            real_write(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert main([*TRAIN_ARGS, "--output-dir", str(run), "--text-encoder", str(tiny_bert)]) == 2
    assert last_line(capsys) == f"bifit train: error: {run / 'final'}: No space left on device"
    assert hidden(run) == [] and not (run / "final").exists()
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "checkpoint-00000002.pt"


@pytest.mark.parametrize("where", ["train_config.json", "checkpoint", "final"])
def test_a_read_only_output_location_is_one_line(tiny_bert, tmp_path, capsys, monkeypatch, where):
    # Root ignores permissions: the refusal of a read-only file system is raised where bifit creates
    # a file, as the system raises it (with the file's name).
    import bifit.modeling.checkpoint as checkpoint_module

    def refuse(name: str):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)

    run = tmp_path / "run"
    if where == "train_config.json":
        real_write = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: refuse(str(self)) if self.name == where
                            else real_write(self, *a, **k))
        expected = run / where
    elif where == "checkpoint":
        monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp", lambda prefix, suffix, dir: refuse(f"{dir}/{prefix}x{suffix}"))
        expected = run / "checkpoints" / ".checkpoint-00000001.pt.x.tmp"
    else:
        monkeypatch.setattr(checkpoint_module.tempfile, "mkdtemp", lambda prefix, dir: refuse(f"{dir}/{prefix}x"))
        expected = run / ".final.x"
    assert main([*TRAIN_ARGS, "--output-dir", str(run), "--text-encoder", str(tiny_bert)]) == 2
    assert last_line(capsys) == f"bifit train: error: {expected}: Read-only file system"
