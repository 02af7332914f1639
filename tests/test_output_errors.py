"""Outputs that cannot be written (a read-only or full location, a file in the way) fail with one
`OutputError` (an OSError) whose message names the path and what failed, and leave earlier outputs as
they were. The commands are run through their parsers' functions, as `bifit.cli.main` runs them (the
mapping of OSError to a one-line message is the CLI's)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bifit
from bifit.cli import build_parser
from bifit.inference.protocols import save_mask_png
from bifit.inference.predictor import Segmenter
from bifit.inference.visualize import GifWriter, Mp4Writer
from bifit.outputs import OutputError, write_text

FAST = ["--short-side", "32", "--quiet"]
DEV_FULL = Path("/dev/full")  # every write fails with ENOSPC, as on a full disk
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs Linux's /dev/full")


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def checkpoint(tiny_bert, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return bifit.save_pretrained(bifit.build_model("tiny", text_encoder=str(tiny_bert)), tmp_path_factory.mktemp("c") / "m")


@pytest.fixture()
def image(tmp_path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 34, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


@needs_dev_full
def test_writers_name_the_file_a_full_disk_refused(tmp_path):
    for name in ("a.png", "a.gif", "a.mp4", "a.json"):
        (tmp_path / name).symlink_to(DEV_FULL)
    frame = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(OutputError, match=r"cannot write .*a.png: No space left on device") as info:
        save_mask_png(np.ones((16, 16), bool), tmp_path / "a.png")
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    with pytest.raises(OutputError, match=r"cannot write .*a.gif: No space left on device"):
        with GifWriter(tmp_path / "a.gif", 5) as gif:
            gif.write(frame)
    with pytest.raises(OutputError, match=r"cannot write .*a.mp4: "):
        with Mp4Writer(tmp_path / "a.mp4", 5) as mp4:
            for _ in range(3):
                mp4.write(frame)
    with pytest.raises(OutputError, match=r"cannot write .*a.json: No space left on device"):
        write_text(tmp_path / "a.json", "{}" * 10000)


def test_segment_into_an_unwritable_location_fails_before_the_model_runs(checkpoint, image, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("in the way")
    monkeypatch.setattr(Segmenter, "stream", lambda *a, **k: pytest.fail("the model ran"))
    out = tmp_path / "a_file" / "sub" / "out"
    with pytest.raises(OutputError, match=r"cannot create a temporary folder in .*a_file/sub: Not a directory"):
        run(["segment", str(image), "-t", "a dog", "-c", str(checkpoint), "-o", str(out), *FAST])


@needs_dev_full
def test_segment_on_a_full_disk_names_the_file_and_keeps_the_earlier_outputs(checkpoint, image, tmp_path, monkeypatch):
    out = tmp_path / "deep" / "out"
    args = ["segment", str(image), "-c", str(checkpoint), "-o", str(out), *FAST]
    assert run(args + ["-t", "a dog"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    save = Image.Image.save

    def save_on_a_full_disk(self, fp, *a, **k):
        # The mask PNG of the second expression goes to /dev/full: the kernel's own ENOSPC, mid-write.
        if str(fp).endswith("masks/photo.png") and "1_a_cat" in str(fp):
            return save(self, DEV_FULL, "PNG")
        return save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save_on_a_full_disk)
    with pytest.raises(OutputError, match=r"cannot write .*/1_a_cat/masks/photo.png: No space left on device"):
        run(args + ["-t", "a dog", "-t", "a cat", "--overwrite"])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary folder left behind
    # A run that fails in a folder it created leaves no empty folders behind either.
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: save(self, DEV_FULL, "PNG"))
    with pytest.raises(OutputError, match="No space left on device"):
        run(["segment", str(image), "-t", "a dog", "-c", str(checkpoint), "-o", str(tmp_path / "new" / "x" / "out"),
             *FAST])
    assert not (tmp_path / "new").exists()


def test_demo_into_an_unwritable_location_names_it(tmp_path):
    (tmp_path / "a_file").write_text("in the way")
    with pytest.raises(OutputError, match=r"cannot create the folder .*a_file/out: Not a directory"):
        run(["demo", "--clips", "1", "--frames", "2", "--output", str(tmp_path / "a_file" / "out")])


@needs_dev_full
def test_demo_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    out = tmp_path / "out"
    save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *a, **k: save(self, DEV_FULL, "GIF", **k))
    with pytest.raises(OutputError, match=r"cannot write .*out/clip0.gif: No space left on device"):
        run(["demo", "--clips", "1", "--frames", "2", "--output", str(out)])
    assert not (out / "results.json").exists()  # written last, only once every overlay is
