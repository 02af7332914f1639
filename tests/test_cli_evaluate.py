"""`bifit evaluate davis` on a tiny DAVIS-2017 folder (the A2D/JHMDB and Ref-YouTube-VOS held-out
subcommands are exercised with their prediction commands in tests/inference/)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bifit.cli import main

H, W = 24, 32
SEQUENCES = {"dogs": 2, "cows": 1}


def write_davis_gt(root: Path) -> Path:
    """DAVIS/ with val sequences 'dogs' (objects 1, 2) and 'cows' (object 1), 4 frames each."""
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    for seq, n_obj in SEQUENCES.items():
        (root / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (root / "Annotations_unsupervised" / "480p" / seq).mkdir(parents=True)
        for t in range(4):
            Image.new("RGB", (W, H)).save(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg")
            ids = np.zeros((H, W), np.uint8)
            for k in range(1, n_obj + 1):
                ids[8 * k - 6 : 8 * k, 2 + t : 14 + t] = k
            img = Image.fromarray(ids, mode="P")
            img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
            img.save(root / "Annotations_unsupervised" / "480p" / seq / f"{t:05d}.png")
    return root


@pytest.fixture()
def davis(tmp_path) -> Path:
    return write_davis_gt(tmp_path / "DAVIS")


def test_perfect_results_score_one_and_write_the_toolkit_csvs(davis, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(davis / "Annotations_unsupervised" / "480p", results)
    assert main(["evaluate", "davis", "--davis-root", str(davis), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "Global results for val" in out and "dogs_2" in out
    assert (results / "global_results-val.csv").read_text().splitlines() == [
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay",
        "1.00000,1.00000,1.00000,0.00000,1.00000,1.00000,0.00000",
    ]
    assert (results / "per-sequence_results-val.csv").read_text().splitlines() == [
        "Sequence,J-Mean,F-Mean", "dogs_1,1.00000,1.00000", "dogs_2,1.00000,1.00000", "cows_1,1.00000,1.00000",
    ]


def test_missing_object_and_renumbered_ids(davis, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(davis / "Annotations_unsupervised" / "480p", results)
    for png in (results / "dogs").glob("*.png"):
        ids = np.array(Image.open(png))
        # Only object 2 is predicted, under id 1: the unsupervised matching pairs it with object 2;
        # the padded empty proposal 2 gets object 1. Rows follow the proposal ids, as the toolkit's.
        swapped = np.where(ids == 1, 0, ids)
        Image.fromarray(np.where(swapped == 2, 1, 0).astype(np.uint8), mode="L").save(png)
    assert main(["evaluate", "davis", "--davis-root", str(davis), "--results", str(results)]) == 0
    rows = (results / "per-sequence_results-val.csv").read_text().splitlines()[1:]
    assert rows == ["dogs_1,1.00000,1.00000", "dogs_2,0.00000,0.00000", "cows_1,1.00000,1.00000"]
    values = (results / "global_results-val.csv").read_text().splitlines()[1]
    assert values.split(",")[1] == f"{2 / 3:.5f}"


def test_errors_are_one_line(davis, tmp_path, capsys):
    assert main(["evaluate", "davis", "--davis-root", str(davis), "--results", str(tmp_path / "none")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    results = tmp_path / "results"
    shutil.copytree(davis / "Annotations_unsupervised" / "480p", results)
    (results / "cows" / "00002.png").unlink()
    assert main(["evaluate", "davis", "--davis-root", str(davis), "--results", str(results)]) == 2
    assert "result mask not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "davis", "--davis-root", str(davis), "--results", str(results), "--task", "bogus"])
