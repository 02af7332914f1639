"""`bifit evaluate davis|ytvos|a2d|jhmdb`: score existing predictions with the official metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate predictions: DAVIS-2017 J&F, Ref-YouTube-VOS held-out J&F, A2D/JHMDB metrics",
        description="Score predictions already on disk with metrics equal to the official tools.",
    )
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    davis = add_command(sub, "davis", run_davis)
    davis.add_argument("--davis-root", type=Path, required=True, help="DAVIS folder (ImageSets, JPEGImages, Annotations*)")
    davis.add_argument("--results", type=Path, required=True, help="folder with one sub-folder of PNGs per sequence")
    davis.add_argument("--set", default="val", help="ImageSets subset (default val)")
    davis.add_argument(
        "--task", default="unsupervised", choices=["unsupervised", "semi-supervised"],
        help="toolkit task (default unsupervised, the Ref-DAVIS17 protocol)",
    )

    ytvos = add_command(sub, "ytvos", run_ytvos)
    ytvos.add_argument("--data-root", type=Path, required=True, help="Ref-YouTube-VOS root")
    ytvos.add_argument("--results", type=Path, required=True, help="folder of the held-out predictions")
    ytvos.add_argument("--heldout-every", type=int, default=20, help="held-out split: one video in this many (default 20)")

    for name, title in (("a2d", "A2D-Sentences (test split)"), ("jhmdb", "JHMDB-Sentences")):
        p = add_command(
            sub, name, run_a2d, help=f"{title}: official metrics of a COCO-results predictions file",
            description="Evaluates a predictions JSON (COCO results: image_id, segmentation RLE, score; all queries "
            "of each sample, as `bifit predict` writes it) against the ground truth read from the dataset.",
        )
        p.add_argument("--data-root", type=Path, required=True, help=f"{title} root")
        p.add_argument("--predictions", type=Path, required=True, help="predictions JSON file")
        p.add_argument("--output", type=Path, default=None, help="write the metrics to this JSON file")


def run_davis(args: argparse.Namespace) -> int:
    """DAVIS-2017 J&F of a results folder (as the toolkit's evaluation_method.py)

    Evaluates <results>/<sequence>/<frame>.png id maps, prints the global and per-sequence tables and writes
    global_results-<set>.csv and per-sequence_results-<set>.csv into the results folder. For Ref-DAVIS17
    evaluate each <output>/valid/anno_k folder (or let `bifit predict davis` do it).
    """
    from ..evaluation import evaluate_davis, format_davis_table

    results = evaluate_davis(args.davis_root, args.results, args.set, args.task, progress=True)
    print(format_davis_table(results, args.set))
    print(f"\nwrote global_results-{args.set}.csv and per-sequence_results-{args.set}.csv into {args.results}")
    return 0


def run_ytvos(args: argparse.Namespace) -> int:
    """J&F of held-out Ref-YouTube-VOS training videos against their annotations

    Evaluates <results>/<video>/<exp_id>/<frame>.png (as written by `bifit predict ytvos --split heldout`)
    for the held-out training videos; writes heldout_results.json and heldout_per-expression.csv next to the
    results folder.
    """
    from ..data.ytvos import ytvos_heldout_videos
    from ..inference.ytvos_predict import evaluate_ytvos_results, format_ytvos_results, write_ytvos_results

    if not args.results.is_dir():
        raise FileNotFoundError(f"results folder not found: {args.results}")
    videos = ytvos_heldout_videos(args.data_root, args.heldout_every)
    results = evaluate_ytvos_results(videos, args.results)
    json_path, csv_path = write_ytvos_results(results, args.results.parent, "heldout")
    print(format_ytvos_results(results, f"Ref-YouTube-VOS held-out (1 in {args.heldout_every} train videos)"))
    print(f"wrote {json_path} and {csv_path}")
    return 0


def run_a2d(args: argparse.Namespace) -> int:
    from ..inference.a2d_predict import evaluate_predictions, format_a2d_metrics, ground_truth, load_predictions

    predictions = load_predictions(args.predictions)
    metrics = evaluate_predictions(ground_truth(args.benchmark, args.data_root), predictions)
    print(format_a2d_metrics(metrics, "A2D-Sentences" if args.benchmark == "a2d" else "JHMDB-Sentences"))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0
