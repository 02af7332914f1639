"""Runs the OFFICIAL evaluation tools on the synthetic test inputs and writes reference numbers.

The inputs come from tests/evaluation/evaluation_fixture_builders.py; the outputs are the JSON
fixtures that tests/evaluation/ compare bifit.evaluation against:

- davis_frames.json: db_eval_iou / db_eval_boundary of single frames, and skimage disk kernels;
- davis_eval.json: eval_davis.py's CSV files (run unchanged) and DAVISEvaluation's per-object
  statistics, for the unsupervised and the semi-supervised task;
- a2d.json: evaluate_a2d's metrics (COCOeval segm with useCats = 0 and a2d_eval's precision/IoU),
  with A2D-style string ids and with ids 1..N, plus the same with only the top-1 query submitted.

Needs, besides the official code: numpy, scipy, opencv, pillow, scikit-image, pandas, torch,
torchvision, tqdm and pycocotools (NumPy 2 is fine: it has ``np.bool`` again, and the toolkit's
``np.int`` is only used in code the evaluation never calls).

Usage:
    python scripts/make_evaluation_fixtures.py --official /path/to/BIFIT \
        --out tests/fixtures/evaluation [--work /tmp/eval_fixture_work]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "evaluation"))
sys.path.insert(0, str(REPO / "src"))

import evaluation_fixture_builders as builders  # noqa: E402

from bifit.evaluation import disk_kernel  # noqa: E402


def _import_official_davis(official: Path):
    sys.path.insert(0, str(official))
    from davis2017 import metrics
    from davis2017.evaluation import DAVISEvaluation

    return metrics, DAVISEvaluation


def frames_fixture(official: Path) -> dict:
    from skimage.morphology import disk

    metrics, _ = _import_official_davis(official)
    cases = []
    for case in builders.frame_cases():
        j = metrics.db_eval_iou(case["gt"], case["pred"], case["void"])
        f = metrics.db_eval_boundary(
            case["gt"], case["pred"], case["void"], bound_th=case["bound_th"]
        )
        cases.append({"name": case["name"], "J": float(j), "F": float(f)})
    kernels = {}
    for radius in builders.DISK_RADII:
        reference = disk(radius).astype(np.uint8)
        if not np.array_equal(reference, disk_kernel(radius)):
            raise AssertionError(f"disk_kernel({radius}) differs from skimage.morphology.disk")
        kernels[str(radius)] = ["".join(str(v) for v in row) for row in reference]
    return {"cases": cases, "disk_kernels": kernels}


def _run_eval_davis(
    official: Path, davis_root: Path, results: Path, set_name: str, task: str
) -> dict:
    code = (
        f"import runpy, sys; sys.path.insert(0, {str(official)!r}); "
        f"sys.argv = ['eval_davis.py', '--davis_path', {str(davis_root)!r}, '--results_path', "
        f"{str(results)!r}, '--set', {set_name!r}, '--task', {task!r}]; "
        f"runpy.run_path({str(official / 'eval_davis.py')!r}, run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=official, capture_output=True)
    return {
        "global_csv": (results / f"global_results-{set_name}.csv").read_text(),
        "per_sequence_csv": (results / f"per-sequence_results-{set_name}.csv").read_text(),
    }


def davis_fixture(official: Path, work: Path) -> dict:
    _, DAVISEvaluation = _import_official_davis(official)
    paths = builders.write_davis_tree(work)
    out = {}
    for task, set_name, results in (
        ("unsupervised", builders.DAVIS_UNSUPERVISED_SET, paths["results_unsupervised"]),
        ("semi-supervised", builders.DAVIS_SEMI_SUPERVISED_SET, paths["results_semi_supervised"]),
    ):
        with contextlib.redirect_stderr(io.StringIO()):
            evaluation = DAVISEvaluation(
                davis_root=str(paths["davis_root"]), task=task, gt_set=set_name
            )
            metrics_res = evaluation.evaluate(str(results))
        entry = {
            measure: {
                "M": [float(v) for v in metrics_res[measure]["M"]],
                "R": [float(v) for v in metrics_res[measure]["R"]],
                "D": [float(v) for v in metrics_res[measure]["D"]],
                "names": list(metrics_res[measure]["M_per_object"]),
            }
            for measure in ("J", "F")
        }
        entry.update(_run_eval_davis(official, paths["davis_root"], results, set_name, task))
        out[task] = {"set": set_name, **entry}
    return out


def _official_a2d(official: Path, samples, ids, top1_only: bool, work: Path) -> dict:
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    spec = importlib.util.spec_from_file_location("a2d_eval", official / "datasets" / "a2d_eval.py")
    a2d_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(a2d_eval)

    # Ground truth written like MTTR's create_a2d_sentences_ground_truth_test_annotations.
    images, annotations = [], []
    for counter, ((gt, _, _), image_id) in enumerate(zip(samples, ids, strict=True), start=1):
        rle = mask_util.encode(np.asfortranarray(gt.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x, y, w, h = mask_util.toBbox(rle).tolist()
        images.append({"id": image_id, "height": gt.shape[0], "width": gt.shape[1]})
        annotations.append(
            {
                "id": counter,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": rle,
                "area": float(mask_util.area(rle)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            }
        )
    gt_path = work / "gt_in_coco_format.json"
    gt_path.write_text(
        json.dumps(
            {
                "categories": [{"id": 1, "name": "dummy_class"}],
                "images": images,
                "annotations": annotations,
            }
        )
    )

    # Predictions as engine.evaluate_a2d collects them from the post-processor.
    predictions = []
    for (_, masks, scores), image_id in zip(samples, ids, strict=True):
        entries = []
        for mask, score in zip(masks, scores, strict=True):
            rle = mask_util.encode(np.array(mask[:, :, np.newaxis], dtype=np.uint8, order="F"))[0]
            entries.append(
                {"image_id": image_id, "category_id": 1, "segmentation": rle, "score": float(score)}
            )
        if top1_only:
            entries = [sorted(entries, key=lambda a: a["score"])[-1]]
        predictions.extend(entries)

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_pred = coco_gt.loadRes(predictions)
        coco_eval = COCOeval(coco_gt, coco_pred, iouType="segm")
        coco_eval.params.useCats = 0
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        precision_at_k, overall_iou, mean_iou = a2d_eval.calculate_precision_at_k_and_iou_metrics(
            coco_gt, coco_pred
        )
    metrics = {"mAP": coco_eval.stats[0], "AP50": coco_eval.stats[1], "AP75": coco_eval.stats[2]}
    metrics.update(
        {f"P@{k}": p for k, p in zip([0.5, 0.6, 0.7, 0.8, 0.9], precision_at_k, strict=True)}
    )
    metrics.update({"overall_iou": overall_iou, "mean_iou": mean_iou})
    return {k: float(v) for k, v in metrics.items()}


def a2d_fixture(official: Path, work: Path) -> dict:
    samples, string_ids = builders.a2d_samples()
    out = {}
    for label, ids in (
        ("string_ids", string_ids),
        ("default_ids", list(range(1, len(samples) + 1))),
    ):
        out[label] = {
            "all_queries": _official_a2d(official, samples, ids, top1_only=False, work=work),
            "top1_only": _official_a2d(official, samples, ids, top1_only=True, work=work),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--official", type=Path, required=True, help="checkout of the official BIFIT code"
    )
    parser.add_argument("--out", type=Path, required=True, help="fixture folder to write")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    args = parser.parse_args()
    official = args.official.resolve()
    for required in ("eval_davis.py", "davis2017/evaluation.py", "datasets/a2d_eval.py"):
        if not (official / required).is_file():
            raise SystemExit(
                f"{official / required} not found: --official must be the BIFIT checkout"
            )
    work = args.work or Path(tempfile.mkdtemp(prefix="bifit_eval_fixtures_"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)

    fixtures = {
        "davis_frames.json": frames_fixture(official),
        "davis_eval.json": davis_fixture(official, work / "davis"),
        "a2d.json": a2d_fixture(official, work),
    }
    for name, content in fixtures.items():
        (args.out / name).write_text(json.dumps(content, indent=1) + "\n")
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
