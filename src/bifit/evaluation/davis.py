"""Whole-dataset DAVIS-2017 evaluation (J&F), equal to the official ``davis2017-evaluation``.

On-disk layout read (as the toolkit reads it)::

    <davis_root>/ImageSets/2017/<set>.txt                   one sequence name per line
    <davis_root>/JPEGImages/<resolution>/<seq>/*.jpg         only counted
    <davis_root>/Annotations_unsupervised/<resolution>/<seq>/<frame>.png   (task "unsupervised")
    <davis_root>/Annotations/<resolution>/<seq>/<frame>.png                (task "semi-supervised")
    <results_path>/<seq>/<frame>.png                         one id map per annotated frame

Masks are 2-D id maps (palette or grey PNGs); 255 in the ground truth marks void pixels. Frames are
the sorted annotation file names. The number of ground-truth objects of a sequence is the largest
id of its first annotation; the number of result objects is the largest id over the evaluated
result frames, ids in between being empty objects.

Unsupervised task: every proposal is compared with every object over all frames (void pixels
excluded), and proposals are assigned to objects by ``linear_sum_assignment`` maximising the summed
(mean J + mean F) / 2; at most 20 proposals. Semi-supervised task: result id k is object k, the
first and last frames are not evaluated and void pixels count as background (the toolkit passes no
void mask there).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from bifit.data.video import open_image
from bifit.evaluation.metrics import pairwise_frame_scores, sequence_statistics
from bifit.outputs import write_text

__all__ = [
    "DAVIS_SETS",
    "DAVIS_TASKS",
    "GLOBAL_COLUMNS",
    "PER_SEQUENCE_COLUMNS",
    "average_global_results",
    "davis_csv_texts",
    "evaluate_davis",
    "format_davis_table",
    "write_davis_csvs",
]

DAVIS_SETS = ("train", "val", "test-dev", "test-challenge")
DAVIS_TASKS = ("semi-supervised", "unsupervised")
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
VOID_ID = 255
MAX_PROPOSALS = 20
BOUND_TH = 0.008


def _read_id_map(path: Path) -> np.ndarray:
    """[H, W] uint8 id map of a PNG."""
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    with open_image(path) as image:
        ids = np.array(image)
    if ids.ndim != 2:
        raise ValueError(
            f"{path} must be a single-channel id map (palette or grey PNG), got shape {ids.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise ValueError(f"{path} holds ids outside 0..255")
    return ids.astype(np.uint8)


def _read_sequence_ids(paths: Sequence[Path]) -> np.ndarray:
    """[T, H, W] uint8 id maps of one sequence, all frames sized like the first."""
    first = _read_id_map(paths[0])
    stack = np.empty((len(paths), *first.shape), dtype=np.uint8)
    stack[0] = first
    for t, path in enumerate(paths[1:], start=1):
        ids = _read_id_map(path)
        if ids.shape != first.shape:
            raise ValueError(f"{path} has size {ids.shape}, but {paths[0]} has {first.shape}")
        stack[t] = ids
    return stack


def _sequence_names(set_file: Path) -> list[str]:
    names: list[str] = []
    for line in set_file.read_text().splitlines():
        name = line.strip()
        if name and name not in names:
            names.append(name)
    return names


def _evaluate_sequence(
    seq: str, gt_paths: list[Path], result_paths: list[Path], task: str, bound_th: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-object per-frame J and F of one sequence: two [n_objects, T_eval] arrays."""
    gt_ids = _read_sequence_ids(gt_paths)
    first = gt_ids[0]
    n_objects = int(np.where(first == VOID_ID, 0, first).max())
    semi = task == "semi-supervised"
    if semi:
        if len(gt_paths) < 3:
            raise ValueError(
                f"sequence {seq!r} has {len(gt_paths)} frames; the semi-supervised task skips the "
                "first and last frame and needs at least 3"
            )
        frames = list(range(1, len(gt_paths) - 1))
    else:
        frames = list(range(len(gt_paths)))

    res_ids = _read_sequence_ids([result_paths[t] for t in frames])
    if res_ids.shape[1:] != gt_ids.shape[1:]:
        raise ValueError(
            f"results of sequence {seq!r} have size {res_ids.shape[1:]}, "
            f"but its annotations have {gt_ids.shape[1:]}"
        )
    n_res = int(res_ids.max())
    if semi and n_res > n_objects:
        raise ValueError(
            f"results of sequence {seq!r} use object id {n_res}, but the sequence has only "
            f"{n_objects} objects"
        )
    if not semi and n_res > MAX_PROPOSALS:
        raise ValueError(
            f"results of sequence {seq!r} use id {n_res}; at most {MAX_PROPOSALS} proposals "
            "are allowed"
        )

    # Missing result ids (and missing proposals up to the object count) are empty masks.
    gt_labels = np.arange(1, n_objects + 1, dtype=np.uint8)[:, None, None]
    res_labels = np.arange(1, max(n_res, n_objects) + 1, dtype=np.uint8)[:, None, None]
    j_values = np.zeros((len(res_labels), n_objects, len(frames)))
    f_values = np.zeros_like(j_values)
    for k, t in enumerate(frames):
        # The toolkit passes no void mask in the semi-supervised task: void counts as background.
        void = None if semi else gt_ids[t] == VOID_ID
        j_values[:, :, k], f_values[:, :, k] = pairwise_frame_scores(
            gt_ids[t] == gt_labels, res_ids[k] == res_labels, void, bound_th, diagonal_only=semi
        )

    if semi:
        diagonal = np.arange(n_objects)
        return j_values[diagonal, diagonal], f_values[diagonal, diagonal]
    pair_means = (np.mean(j_values, axis=2) + np.mean(f_values, axis=2)) / 2
    rows, cols = linear_sum_assignment(-pair_means)
    return j_values[rows, cols, :], f_values[rows, cols, :]


def evaluate_davis(
    davis_root: str | Path,
    results_path: str | Path,
    set: str = "val",
    task: str = "unsupervised",
    *,
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
    write_csv: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluates result masks on a DAVIS-2017 set exactly as the toolkit and ``eval_davis.py`` do.

    Args:
        davis_root: DAVIS folder holding ``ImageSets``, ``JPEGImages`` and the annotations.
        results_path: folder with one sub-folder of ``<frame>.png`` id maps per sequence.
        set: one of ``DAVIS_SETS``.
        task: "unsupervised" (Ref-DAVIS17 protocol) or "semi-supervised".
        resolution: resolution folder name.
        sequences: sequences to evaluate; ``None`` reads ``ImageSets/<year>/<set>.txt``.
        write_csv: write ``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv`` into
            ``results_path`` (always recomputed, unlike ``eval_davis.py`` which reuses them).
        progress: show a progress bar over sequences.

    Returns:
        ``{"global": {column: float for GLOBAL_COLUMNS}, "per_sequence": [{"Sequence": name,
        "J-Mean": float, "F-Mean": float}, ...], "per_object": {name: {"J": [T] list, "F": [T]
        list}}}``. Rows are named ``<seq>_<k>``; in the unsupervised task k numbers the matched
        pairs in increasing proposal id, as the toolkit does.
    """
    if set not in DAVIS_SETS:
        raise ValueError(f"set must be one of {DAVIS_SETS}, got {set!r}")
    if task not in DAVIS_TASKS:
        raise ValueError(f"task must be one of {DAVIS_TASKS}, got {task!r}")
    root = Path(davis_root)
    results_dir = Path(results_path)
    if not root.is_dir():
        raise FileNotFoundError(f"DAVIS root not found: {root}")
    if not results_dir.is_dir():
        raise FileNotFoundError(f"results folder not found: {results_dir}")
    year = "2019" if task == "unsupervised" and set in ("test-dev", "test-challenge") else "2017"
    annotation_dir = root / (
        "Annotations" if task == "semi-supervised" else "Annotations_unsupervised"
    )
    annotation_dir = annotation_dir / resolution
    image_dir = root / "JPEGImages" / resolution
    if sequences is None:
        set_file = root / "ImageSets" / year / f"{set}.txt"
        if not set_file.is_file():
            raise FileNotFoundError(f"sequence list not found: {set_file}")
        sequences = _sequence_names(set_file)
    if not annotation_dir.is_dir():
        raise FileNotFoundError(
            f"annotation folder for the {task} task not found: {annotation_dir}"
        )

    per_frame: dict[str, dict[str, np.ndarray]] = {}
    for seq in tqdm(sequences, desc="DAVIS", disable=not progress):
        n_images = len(list((image_dir / seq).glob("*.jpg")))
        if n_images == 0:
            raise FileNotFoundError(f"no images for sequence {seq!r} in {image_dir / seq}")
        gt_paths = sorted((annotation_dir / seq).glob("*.png"))
        if len(gt_paths) < n_images:
            raise FileNotFoundError(
                f"sequence {seq!r} has {n_images} images but {len(gt_paths)} annotations in "
                f"{annotation_dir / seq}"
            )
        result_paths = [results_dir / seq / path.name for path in gt_paths]
        missing = [path for path in result_paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"result mask not found: {missing[0]} ({len(missing)} frame(s) of sequence "
                f"{seq!r} missing; every annotated frame needs a <frame>.png id map)"
            )
        j_values, f_values = _evaluate_sequence(seq, gt_paths, result_paths, task, BOUND_TH)
        for k in range(j_values.shape[0]):
            per_frame[f"{seq}_{k + 1}"] = {"J": j_values[k], "F": f_values[k]}

    stats = {
        name: [sequence_statistics(values[measure]) for measure in ("J", "F")]
        for name, values in per_frame.items()
    }
    j_stats = np.array([s[0] for s in stats.values()]).reshape(-1, 3)
    f_stats = np.array([s[1] for s in stats.values()]).reshape(-1, 3)
    j_mean, j_recall, j_decay = (_mean(j_stats[:, i]) for i in range(3))
    f_mean, f_recall, f_decay = (_mean(f_stats[:, i]) for i in range(3))
    global_values = (j_mean + f_mean) / 2.0, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay
    global_results = dict(zip(GLOBAL_COLUMNS, global_values, strict=True))
    per_sequence = [
        {"Sequence": name, "J-Mean": s[0][0], "F-Mean": s[1][0]} for name, s in stats.items()
    ]
    results = {
        "global": global_results,
        "per_sequence": per_sequence,
        "per_object": {
            name: {"J": values["J"].tolist(), "F": values["F"].tolist()}
            for name, values in per_frame.items()
        },
    }
    if write_csv:
        write_davis_csvs(results, results_dir, set)
    return results


def _mean(values: np.ndarray) -> float:
    # The toolkit averages per-object values; with no objects at all the mean is NaN.
    if values.size == 0:
        return math.nan
    return float(np.mean(values))


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text byte-identical to ``pandas.DataFrame.to_csv(index=False, float_format="%.5f")``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    # pandas writes NaN as an empty cell and other floats through the %-format.
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.5f}"
    return value


def davis_csv_texts(results: dict[str, Any]) -> tuple[str, str]:
    """(global, per-sequence) CSV texts of ``evaluate_davis`` results, as eval_davis.py writes."""
    global_text = _csv_text(GLOBAL_COLUMNS, [[results["global"][c] for c in GLOBAL_COLUMNS]])
    rows = [[row[c] for c in PER_SEQUENCE_COLUMNS] for row in results["per_sequence"]]
    return global_text, _csv_text(PER_SEQUENCE_COLUMNS, rows)


def write_davis_csvs(
    results: dict[str, Any], results_path: str | Path, set: str = "val"
) -> tuple[Path, Path]:
    """Writes ``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv`` into results_path.

    Returns:
        The two written paths (global, per-sequence).
    """
    folder = Path(results_path)
    global_text, per_sequence_text = davis_csv_texts(results)
    global_path = folder / f"global_results-{set}.csv"
    per_sequence_path = folder / f"per-sequence_results-{set}.csv"
    write_text(global_path, global_text)
    write_text(per_sequence_path, per_sequence_text)
    return global_path, per_sequence_path


def average_global_results(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Column-wise mean of several ``evaluate_davis`` global results.

    Ref-DAVIS17 evaluates each of the four annotators' expression sets (``anno_0`` … ``anno_3``)
    separately; the reported number is this mean of the four global results.
    """
    if not results:
        raise ValueError("average_global_results needs at least one result")
    return {c: float(np.mean([r["global"][c] for r in results])) for c in GLOBAL_COLUMNS}


def format_davis_table(results: dict[str, Any], set: str = "val") -> str:
    """Printable tables of ``evaluate_davis`` results (global, then per sequence), 5 decimals."""

    def table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = [" ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
        lines += [" ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        return lines

    def number(value: float) -> str:
        return "nan" if math.isnan(value) else f"{value:.5f}"

    global_row = [[number(results["global"][c]) for c in GLOBAL_COLUMNS]]
    seq_rows = [
        [row["Sequence"], number(row["J-Mean"]), number(row["F-Mean"])]
        for row in results["per_sequence"]
    ]
    lines = [f"--------------------------- Global results for {set} ---------------------------"]
    lines += table(GLOBAL_COLUMNS, global_row)
    lines += ["", f"---------- Per sequence results for {set} ----------"]
    lines += table(PER_SEQUENCE_COLUMNS, seq_rows) if seq_rows else ["(no objects)"]
    return "\n".join(lines)
