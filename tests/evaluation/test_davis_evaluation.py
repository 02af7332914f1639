"""Whole DAVIS-2017 evaluation against eval_davis.py / DAVISEvaluation run on a tiny dataset."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from evaluation_fixture_builders import (
    DAVIS_SEMI_SUPERVISED_SET,
    DAVIS_UNSUPERVISED_SET,
    write_davis_tree,
)
from PIL import Image

from bifit.evaluation import (
    average_global_results,
    evaluate_davis,
    format_davis_table,
    sequence_statistics,
)

FIXTURE = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "evaluation" / "davis_eval.json").read_text()
)
TASKS = {
    "unsupervised": (DAVIS_UNSUPERVISED_SET, "results_unsupervised"),
    "semi-supervised": (DAVIS_SEMI_SUPERVISED_SET, "results_semi_supervised"),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_davis_tree(tmp_path_factory.mktemp("davis"))


@pytest.fixture()
def fresh_tree(tmp_path: Path) -> dict[str, Path]:
    return write_davis_tree(tmp_path)


@pytest.mark.parametrize("task", list(TASKS))
def test_results_equal_the_toolkit(tree: dict[str, Path], task: str) -> None:
    set_name, results_key = TASKS[task]
    reference = FIXTURE[task]
    assert reference["set"] == set_name
    results_dir = tree[results_key]
    results = evaluate_davis(tree["davis_root"], results_dir, set=set_name, task=task)

    # The CSV files are byte-identical to eval_davis.py's (pandas, float_format "%.5f").
    assert (results_dir / f"global_results-{set_name}.csv").read_text() == reference["global_csv"]
    assert (results_dir / f"per-sequence_results-{set_name}.csv").read_text() == reference[
        "per_sequence_csv"
    ]

    # Per-object statistics equal DAVISEvaluation.evaluate's, to the last bit.
    names = [row["Sequence"] for row in results["per_sequence"]]
    assert names == reference["J"]["names"] == reference["F"]["names"]
    for measure in ("J", "F"):
        stats = [sequence_statistics(np.array(results["per_object"][n][measure])) for n in names]
        for i, key in enumerate("MRD"):
            assert [s[i] for s in stats] == reference[measure][key]
        assert [row[f"{measure}-Mean"] for row in results["per_sequence"]] == reference[measure][
            "M"
        ]
        assert results["global"][f"{measure}-Mean"] == np.mean(reference[measure]["M"])
        assert results["global"][f"{measure}-Recall"] == np.mean(reference[measure]["R"])
        assert results["global"][f"{measure}-Decay"] == np.mean(reference[measure]["D"])
    expected_jf = (np.mean(reference["J"]["M"]) + np.mean(reference["F"]["M"])) / 2.0
    assert results["global"]["J&F-Mean"] == expected_jf


def test_table_lists_every_row(tree: dict[str, Path]) -> None:
    results = evaluate_davis(tree["davis_root"], tree["results_unsupervised"], write_csv=False)
    table = format_davis_table(results)
    assert f"{results['global']['J&F-Mean']:.5f}" in table
    for row in results["per_sequence"]:
        assert row["Sequence"] in table


def test_average_of_annotator_results(tree: dict[str, Path]) -> None:
    unsup = evaluate_davis(tree["davis_root"], tree["results_unsupervised"], write_csv=False)
    semi = evaluate_davis(
        tree["davis_root"],
        tree["results_semi_supervised"],
        set=DAVIS_SEMI_SUPERVISED_SET,
        task="semi-supervised",
        write_csv=False,
    )
    mean = average_global_results([unsup, semi])
    for column, value in mean.items():
        assert value == pytest.approx((unsup["global"][column] + semi["global"][column]) / 2)


def test_missing_davis_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DAVIS root not found"):
        evaluate_davis(tmp_path / "nowhere", tmp_path)


def test_missing_result_frame_names_the_file(fresh_tree: dict[str, Path]) -> None:
    missing = fresh_tree["results_unsupervised"] / "noise" / "00002.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        evaluate_davis(fresh_tree["davis_root"], fresh_tree["results_unsupervised"])


def test_missing_sequence_folder(fresh_tree: dict[str, Path]) -> None:
    shutil.rmtree(fresh_tree["results_unsupervised"] / "blobs")
    with pytest.raises(FileNotFoundError, match="blobs"):
        evaluate_davis(fresh_tree["davis_root"], fresh_tree["results_unsupervised"])


def test_too_many_proposals(fresh_tree: dict[str, Path]) -> None:
    frame = fresh_tree["results_unsupervised"] / "noise" / "00001.png"
    ids = np.array(Image.open(frame))
    ids[0, 0] = 21
    Image.fromarray(ids).save(frame)
    with pytest.raises(ValueError, match="'noise'.*at most 20"):
        evaluate_davis(fresh_tree["davis_root"], fresh_tree["results_unsupervised"])


def test_semi_supervised_id_beyond_objects(fresh_tree: dict[str, Path]) -> None:
    frame = fresh_tree["results_semi_supervised"] / "noise" / "00001.png"
    ids = np.array(Image.open(frame))
    ids[0, 0] = 2
    Image.fromarray(ids).save(frame)
    with pytest.raises(ValueError, match="'noise'.*only 1 objects"):
        evaluate_davis(
            fresh_tree["davis_root"],
            fresh_tree["results_semi_supervised"],
            set=DAVIS_SEMI_SUPERVISED_SET,
            task="semi-supervised",
        )


def test_semi_supervised_needs_three_frames(fresh_tree: dict[str, Path]) -> None:
    root = fresh_tree["davis_root"]
    for folder in (
        root / "JPEGImages" / "480p" / "noise",
        root / "Annotations" / "480p" / "noise",
        fresh_tree["results_semi_supervised"] / "noise",
    ):
        for path in sorted(folder.iterdir())[2:]:
            path.unlink()
    with pytest.raises(ValueError, match="'noise' has 2 frames"):
        evaluate_davis(
            root,
            fresh_tree["results_semi_supervised"],
            set=DAVIS_SEMI_SUPERVISED_SET,
            task="semi-supervised",
        )


def test_colour_result_png_is_rejected(fresh_tree: dict[str, Path]) -> None:
    frame = fresh_tree["results_unsupervised"] / "blobs" / "00000.png"
    Image.open(frame).convert("RGB").save(frame)
    with pytest.raises(ValueError, match="00000.png must be a single-channel id map"):
        evaluate_davis(fresh_tree["davis_root"], fresh_tree["results_unsupervised"])


def test_bad_set_and_task(tree: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="set must be one of"):
        evaluate_davis(tree["davis_root"], tree["results_unsupervised"], set="valid")
    with pytest.raises(ValueError, match="task must be one of"):
        evaluate_davis(tree["davis_root"], tree["results_unsupervised"], task="zero-shot")
