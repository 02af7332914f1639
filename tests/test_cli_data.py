"""`bifit data prepare davis`: the Ref-DAVIS17 conversion from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bifit.cli import main

VIDEOS = {"bike": "train", "dogs": "val"}
FILES = ("Davis17_annot1.txt", "Davis17_annot1_full_video.txt", "Davis17_annot2.txt", "Davis17_annot2_full_video.txt")


def write_inputs(root: Path) -> tuple[Path, Path]:
    davis = root / "DAVIS"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    for split in ("train", "val"):
        names = [v for v, s in VIDEOS.items() if s == split]
        (davis / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(names) + "\n")
    for video in VIDEOS:
        for folder in ("JPEGImages", "Annotations_unsupervised"):
            (davis / folder / "480p" / video).mkdir(parents=True)
        for t in range(2):
            Image.new("RGB", (16, 12)).save(davis / "JPEGImages" / "480p" / video / f"{t:05d}.jpg")
            Image.fromarray(np.zeros((12, 16), np.uint8), mode="P").save(
                davis / "Annotations_unsupervised" / "480p" / video / f"{t:05d}.png"
            )
    (davis / "davis_semantics.json").write_text(json.dumps({"bike": {"1": "person", "2": "bicycle"}, "dogs": {"1": "dog"}}))
    text = root / "text"
    text.mkdir()
    for i, name in enumerate(FILES):
        (text / name).write_text(f'bike 2 "bicycle {i}"\nbike 1 "rider {i}"\ndogs 1 "dog {i}"\n')
    return davis, text


def test_prepare_writes_the_ref_davis_layout(tmp_path, capsys):
    davis, text = write_inputs(tmp_path)
    out = tmp_path / "ref-davis"
    args = ["data", "prepare", "davis", "--davis-root", str(davis), "--text-annotations", str(text), "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "train: 1 videos, 8 expressions" in printed and "valid: 1 videos, 4 expressions" in printed
    valid = json.loads((out / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    assert [e["exp"] for e in valid["dogs"]["expressions"].values()] == ["dog 0", "dog 1", "dog 2", "dog 3"]
    train = json.loads((out / "meta_expressions" / "train" / "meta_expressions.json").read_text())["videos"]
    assert [e["exp"] for e in train["bike"]["expressions"].values()][:5] == [
        "rider 0", "rider 1", "rider 2", "rider 3", "bicycle 0",
    ]
    assert (out / "valid" / "JPEGImages" / "dogs").is_symlink()
    assert (out / "train" / "Annotations" / "bike" / "00001.png").is_file()
    assert (davis / "JPEGImages" / "480p" / "dogs" / "00000.jpg").is_file()  # DAVIS left in place
    assert main(args) == 0  # re-running is a no-op for the links


def test_copy_mode_and_errors(tmp_path, capsys):
    davis, text = write_inputs(tmp_path)
    out = tmp_path / "copied"
    assert main(["data", "prepare", "davis", "--davis-root", str(davis), "--text-annotations", str(text),
                 "--output", str(out), "--copy"]) == 0
    assert not (out / "valid" / "JPEGImages" / "dogs").is_symlink()
    assert (out / "valid" / "JPEGImages" / "dogs" / "00001.jpg").is_file()
    capsys.readouterr()
    assert main(["data", "prepare", "davis", "--davis-root", str(tmp_path / "nope"), "--text-annotations", str(text),
                 "--output", str(out)]) == 2
    assert "DAVIS root not found" in capsys.readouterr().err
    (text / FILES[2]).unlink()
    assert main(["data", "prepare", "davis", "--davis-root", str(davis), "--text-annotations", str(text),
                 "--output", str(tmp_path / "x")]) == 2
    assert "Davis17_annot2.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "prepare"])
