"""`bifit segment` as a user runs it: outputs for a video file, a frame folder and an image, and one
clear message with a non-zero exit code for every kind of bad input, without touching existing files."""

from __future__ import annotations

import importlib.resources
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from media import png_header_only, write_video
import bifit
from bifit.cli import main
from bifit.commands.segment import slugify
from bifit.data.video import read_video_file
from bifit.inference.visualize import display_scale

FAST = ["--short-side", "32", "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tiny_bert, module_tmp) -> Path:
    torch.manual_seed(0)
    model = bifit.build_model("tiny", text_encoder=str(tiny_bert))
    return bifit.save_pretrained(model, module_tmp / "tiny")



@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 24, 34, 3), dtype=np.uint8)


def _check_outputs(out: Path, texts: list[str], names: list[str], size: tuple[int, int]) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_frames"] == len(names) and summary["frame_size"] == list(size)
    assert [e["text"] for e in summary["expressions"]] == texts
    for i, (text, entry) in enumerate(zip(texts, summary["expressions"])):
        assert entry["directory"] == f"{i}_{slugify(text)}"
        pngs = sorted((out / entry["directory"] / "masks").glob("*.png"))
        assert [p.stem for p in pngs] == names
        assert [f["frame"] for f in entry["frames"]] == names
        for png, record in zip(pngs, entry["frames"]):
            mask = np.asarray(Image.open(png))
            assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
            assert record["mask_area"] == int((mask > 0).sum())
            assert 0.0 <= record["score"] <= 1.0 and len(record["box"]) == 4
    # Overlays: the frame enlarged to a viewable size, a legend line per expression under it.
    scale = display_scale(*size)
    mp4 = read_video_file(out / "overlay.mp4").frames
    assert mp4.shape[0] == len(names) and mp4.shape[2] == scale * size[1] + (scale * size[1]) % 2
    assert mp4.shape[1] >= scale * size[0] + 16 * len(texts)
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == len(names) and max(gif.size) == min(480, max(mp4.shape[1:3]))
    return summary


def test_segment_a_video_file_with_two_expressions(checkpoint, frames, tmp_path, capsys):
    video = write_video(tmp_path / "clip.mp4", frames, fps=10)
    out = tmp_path / "out"
    texts = ["the red circle", "a dog running on the grass!"]
    code = main(["segment", str(video), "--text", texts[0], "-t", texts[1], "-c", str(checkpoint), "-o", str(out), *FAST])
    assert code == 0
    summary = _check_outputs(out, texts, [f"{i:05d}" for i in range(6)], (24, 34))
    assert summary["fps"] == 10.0 and summary["expressions"][1]["directory"] == "1_a_dog_running_on_the_grass"
    assert "overlay.mp4" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind


def test_the_bundled_model_says_once_that_it_knows_only_synthetic_shapes(checkpoint, frames, tmp_path, capsys):
    video = write_video(tmp_path / "clip.mp4", frames, fps=10)
    assert main(["segment", str(video), "-t", "the red circle", "-o", str(tmp_path / "bundled"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("bundled demo model") == 1 and "synthetic" in err
    assert main(["segment", str(video), "-t", "the red circle", "-c", str(checkpoint), "-o", str(tmp_path / "own"), *FAST]) == 0
    assert "bundled demo model" not in capsys.readouterr().err


def test_segment_in_clips_with_a_stride(checkpoint, frames, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames, fps=10)
    out = tmp_path / "out"
    code = main(["segment", str(video), "-t", "a dog", "-c", str(checkpoint), "-o", str(out), "--clip-length", "2",
                 "--frame-stride", "2", *FAST])
    assert code == 0
    summary = _check_outputs(out, ["a dog"], ["00000", "00002", "00004"], (24, 34))
    assert summary["clip_length"] == 2 and summary["fps"] == 5.0


def test_segment_a_folder_of_frames_and_a_single_image(checkpoint, frames, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames[:3]):
        Image.fromarray(f).save(folder / f"f{i}.jpg")
    assert main(["segment", str(folder), "-t", "a dog", "-c", str(checkpoint), "-o", str(tmp_path / "a"), *FAST]) == 0
    _check_outputs(tmp_path / "a", ["a dog"], ["f0", "f1", "f2"], (24, 34))
    image = tmp_path / "photo.png"
    Image.fromarray(frames[0]).save(image)
    assert main(["segment", str(image), "-t", "a dog", "-c", str(checkpoint), "-o", str(tmp_path / "b"), *FAST]) == 0
    _check_outputs(tmp_path / "b", ["a dog"], ["photo"], (24, 34))


def test_existing_output_is_kept_without_overwrite_and_replaced_with_it(checkpoint, frames, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(frames[0]).save(image)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["segment", str(image), "-c", str(checkpoint), "-o", str(out), *FAST]
    assert main(args + ["-t", "a dog"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(args + ["-t", "a dog", "-t", "the red circle", "--overwrite"]) == 0
    assert main(args + ["-t", "the big blue square", "--overwrite"]) == 0
    # The earlier run's outputs are replaced; files that are not bifit's stay.
    assert sorted(p.name for p in out.iterdir()) == [
        "0_the_big_blue_square", "notes.txt", "overlay.gif", "overlay.mp4", "summary.json"
    ]
    assert (out / "notes.txt").read_text() == "mine"


def _bad_video(kind: str, tmp_path: Path) -> Path:
    if kind == "missing":
        return tmp_path / "nothing.mp4"
    if kind == "unreadable":
        path = tmp_path / "broken.mp4"
        path.write_bytes(b"definitely not a video" * 50)
        return path
    if kind == "no frames":
        return write_video(tmp_path / "empty.avi", np.zeros((0, 16, 16, 3), dtype=np.uint8), fps=10)
    if kind == "bomb":
        return png_header_only(tmp_path / "bomb.png", 30000, 30000)
    if kind == "same names":
        (tmp_path / "frames").mkdir()
        for name in ("0000.jpg", "0001.jpg", "0001.png"):
            Image.new("RGB", (16, 16)).save(tmp_path / "frames" / name)
        return tmp_path / "frames"
    (tmp_path / "empty_folder").mkdir()
    return tmp_path / "empty_folder"


@pytest.mark.parametrize("clip_length", [[], ["--clip-length", "2"]])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "input not found"),
        ("unreadable", "cannot decode video"),
        ("no frames", "contains no frames"),
        ("empty folder", "contains no images"),
        ("bomb", "bomb.png: Image size (900000000 pixels) exceeds limit"),
        ("same names", "holds 0001.jpg and 0001.png"),
    ],
)
def test_bad_videos_fail_with_one_clear_message(checkpoint, tmp_path, capsys, kind, message, clip_length):
    video = _bad_video(kind, tmp_path)
    out = tmp_path / "out"
    assert main(["segment", str(video), "-t", "a dog", "-c", str(checkpoint), "-o", str(out), *FAST, *clip_length]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bifit segment: error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([""], "expression 1 is empty"),
        (["a dog", "   "], "expression 2 is empty"),
        ([" ".join(["dog"] * 40)], "is 42 tokens long; the text encoder accepts at most 32"),
        (["caf\udce9 au lait"], "expression 1 is not valid UTF-8 text (byte 0xe9 at position 3)"),
    ],
)
def test_bad_expressions_fail_with_one_clear_message(checkpoint, frames, tmp_path, capsys, texts, message):
    image = tmp_path / "photo.png"
    Image.fromarray(frames[0]).save(image)
    args = ["segment", str(image), "-c", str(checkpoint), "-o", str(tmp_path / "out"), *FAST]
    for text in texts:
        args += ["--text", text]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_checkpoints_of_the_wrong_kind_fail_with_one_clear_message(checkpoint, frames, tmp_path, capsys, monkeypatch):
    image = tmp_path / "photo.png"
    Image.fromarray(frames[0]).save(image)
    random_file = tmp_path / "weights.pth"
    random_file.write_bytes(np.random.default_rng(0).bytes(1000))
    no_config = tmp_path / "some_dir"
    no_config.mkdir()
    cases = [
        (["-c", str(random_file)], "is not a checkpoint: expected a bifit checkpoint directory"),
        (["-c", str(checkpoint / "model.safetensors")], "is one file of a bifit checkpoint"),
        (["-c", str(no_config)], "is not a bifit checkpoint directory (needs config.json and model.safetensors)"),
        (["-c", str(tmp_path / "nowhere")], "checkpoint not found"),
    ]
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path / "site-packages")
    cases.append(([], "the bundled demo model is not installed"))
    for extra, message in cases:
        assert main(["segment", str(image), "-t", "a dog", "-o", str(tmp_path / "out"), *FAST, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


def _earlier_run(checkpoint, frames, world: Path) -> tuple[list[str], Path]:
    """A finished `bifit segment` run in world/out, beside a file of the user's (world/keep.txt) and with one
    of the user's own files inside out (out/notes.txt)."""
    image = world / "photo.png"
    world.mkdir()
    Image.fromarray(frames[0]).save(image)
    (world / "keep.txt").write_text("the parent's own file")
    out = world / "out"
    args = ["segment", str(image), "-c", str(checkpoint), "-o", str(out), *FAST]
    assert main(args + ["-t", "a dog"]) == 0
    (out / "notes.txt").write_text("mine")
    return args, out


@pytest.mark.parametrize("directory", ["..", "", "a/../..", "/ABSOLUTE", "notes.txt", "victim", "../keep.txt"])
def test_overwrite_never_removes_what_a_tampered_summary_names(checkpoint, frames, tmp_path, directory):
    world = tmp_path / "world"
    args, out = _earlier_run(checkpoint, frames, world)
    victim = tmp_path / "victim"  # a folder of the user's, outside, and one of the same name inside out
    victim.mkdir()
    (victim / "precious.txt").write_text("outside")
    (out / "victim").mkdir()
    (out / "victim" / "precious.txt").write_text("inside")
    summary = json.loads((out / "summary.json").read_text())
    summary["expressions"][0]["directory"] = directory.replace("/ABSOLUTE", str(victim))
    (out / "summary.json").write_text(json.dumps(summary))
    assert main(args + ["-t", "the red circle", "--overwrite"]) == 0
    assert (world / "keep.txt").read_text() == "the parent's own file"
    assert (out / "notes.txt").read_text() == "mine"
    assert (victim / "precious.txt").read_text() == "outside"
    assert (out / "victim" / "precious.txt").read_text() == "inside"
    # The earlier run's folder is no longer listed by the summary, so it is not replaced either.
    assert sorted(p.name for p in out.iterdir()) == [
        "0_a_dog", "0_the_red_circle", "notes.txt", "overlay.gif", "overlay.mp4", "summary.json", "victim"
    ]


def test_overwrite_removes_links_as_links_and_never_follows_them(checkpoint, frames, tmp_path):
    world = tmp_path / "world"
    args, out = _earlier_run(checkpoint, frames, world)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "00000.png").write_text("not a mask of ours")
    (outside / "masks").mkdir()
    (outside / "masks" / "photo.png").write_text("nor this")
    (out / "1_a_cat").symlink_to(outside, target_is_directory=True)
    shutil.rmtree(out / "0_a_dog" / "masks")
    (out / "0_a_dog" / "masks").symlink_to(outside, target_is_directory=True)
    (out / "overlay.gif").unlink()
    (out / "overlay.gif").symlink_to(outside / "00000.png")
    assert main(args + ["-t", "a dog", "-t", "a cat", "--overwrite"]) == 0
    assert (outside / "00000.png").read_text() == "not a mask of ours"
    assert (outside / "masks" / "photo.png").read_text() == "nor this"
    for entry in ["0_a_dog", "0_a_dog/masks", "1_a_cat", "overlay.gif"]:
        assert not (out / entry).is_symlink()
    assert sorted(p.name for p in (out / "1_a_cat" / "masks").iterdir()) == ["photo.png"]


@pytest.mark.parametrize("foreign", ["0_a_dog/my_notes.txt", "0_a_dog/masks/keep.jpg", "0_a_dog/masks/sub/x.png"])
def test_overwrite_refuses_to_remove_a_folder_holding_the_users_files(checkpoint, frames, tmp_path, capsys, foreign):
    world = tmp_path / "world"
    args, out = _earlier_run(checkpoint, frames, world)
    (out / foreign).parent.mkdir(parents=True, exist_ok=True)
    (out / foreign).write_text("mine too")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(args + ["-t", "a dog", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not an output of bifit segment" in err and str(out / foreign.split("/x.png")[0]) in err
    assert len(err.splitlines()) == 1
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / foreign).read_text() == "mine too"


def test_an_absurd_aspect_ratio_is_one_line_and_the_limit_can_be_raised(checkpoint, tmp_path, capsys):
    Image.new("RGB", (4000, 2), (200, 30, 30)).save(tmp_path / "strip.png")
    assert main(["segment", str(tmp_path / "strip.png"), "-t", "a dog", "-c", str(checkpoint), "-o",
                 str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bifit segment: error:") and len(err.splitlines()) == 1
    assert "a 4000x2 frame resized to 720000x360" in err and "--max-long-side" in err
    assert not (tmp_path / "out").exists()
    Image.new("RGB", (100, 2), (200, 30, 30)).save(tmp_path / "short.png")
    args = ["segment", str(tmp_path / "short.png"), "-t", "a dog", "-c", str(checkpoint), *FAST]
    assert main(args + ["-o", str(tmp_path / "a"), "--max-long-side", "1000"]) == 2
    assert "over the limit of 1000 px" in capsys.readouterr().err
    assert main(args + ["-o", str(tmp_path / "b"), "--max-long-side", "1600"]) == 0
    assert main(args + ["-o", str(tmp_path / "c"), "--max-long-side", "0"]) == 2
    assert "--max-long-side must be >= 1" in capsys.readouterr().err
