"""The CLI's last line of defence: failures a user can meet and act on are one line and exit code 2;
a programming error keeps its traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bifit
import bifit.commands.convert
from bifit.cli import main

SRC = Path(bifit.__file__).resolve().parents[1]


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bifit {command}: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_an_output_folder_under_a_file_names_the_path_and_the_reason(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "run"
    assert main(["train", "--preset", "synthetic_tiny", "--output-dir", str(out), "--no-progress"]) == 2
    assert one_line_error(capsys, "train").endswith(f"{out}: Not a directory")


@pytest.mark.parametrize("code, reason", [
    (errno.EROFS, "Read-only file system"),
    (errno.EACCES, "Permission denied"),
    (errno.ENOSPC, "No space left on device"),
])
def test_system_errors_are_the_file_and_the_reason(tmp_path, capsys, monkeypatch, code, reason):
    # Tests run as root here, where permissions do not apply: the write fails as the system would fail it.
    def refuse(args):
        raise OSError(code, os.strerror(code), str(args.output))

    monkeypatch.setattr(bifit.commands.convert, "run", refuse)
    assert main(["convert", "in.pth", str(tmp_path / "out")]) == 2
    assert one_line_error(capsys, "convert") == f"bifit convert: error: {tmp_path / 'out'}: {reason}"


@pytest.mark.parametrize("error, text", [
    (ValueError("a bad value\nover two lines"), "a bad value over two lines"),
    (FileNotFoundError("checkpoint not found: x.pth"), "checkpoint not found: x.pth"),
    (FileExistsError("out already exists; pass --overwrite"), "out already exists; pass --overwrite"),
    (bifit.CheckpointError("x.pth holds no state dict"), "x.pth holds no state dict"),
    (bifit.ExpressionError("expression 1 is empty"), "expression 1 is empty"),
    (FloatingPointError("loss is nan; stopping"), "loss is nan; stopping"),
    (MemoryError(), "out of memory"),
])
def test_known_errors_are_one_line(error, text, capsys, monkeypatch):
    def fail(args):
        raise error

    monkeypatch.setattr(bifit.commands.convert, "run", fail)
    assert main(["convert", "in.pth", "out"]) == 2
    assert one_line_error(capsys, "convert") == f"bifit convert: error: {text}"


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bifit.commands.convert, "run", interrupted)
    assert main(["convert", "in.pth", "out"]) == 130
    assert capsys.readouterr().err.strip() == "bifit: interrupted"


@pytest.mark.parametrize("bug", [KeyError("missing"), TypeError("bad operand"), AttributeError("no attribute"),
                                 IndexError("out of range"), RuntimeError("internal")])
def test_programming_errors_are_not_hidden(bug, monkeypatch):
    def broken(args):
        raise bug

    monkeypatch.setattr(bifit.commands.convert, "run", broken)
    with pytest.raises(type(bug)):
        main(["convert", "in.pth", "out"])


def test_a_bug_shows_its_traceback_from_the_real_command():
    script = (
        "import sys, bifit.commands.convert as c\n"
        "c.run = lambda args: args.no_such_attribute\n"
        "from bifit.cli import main\n"
        "sys.exit(main(['convert', 'in.pth', 'out']))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "AttributeError" in done.stderr and "no_such_attribute" in done.stderr
