"""`bifit predict ytvos|davis|a2d|jhmdb`: the official inference protocols of the four benchmarks.

Every subcommand can run as one process or under ``torchrun --nproc_per_node N`` (one process per
GPU): rank r predicts items r, r + N, ... into the shared output folder; rank 0 waits for the others,
then builds the submission zip / merges the predictions and runs the evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..outputs import make_dirs, write_text
from .arguments import add_command, add_max_long_side

if TYPE_CHECKING:
    from ..data.ytvos import EvalVideo
    from ..inference.protocols import Shard
    from ..modeling.bifit import BifitModel


def _common(parser: argparse.ArgumentParser, data_help: str) -> None:
    parser.add_argument("--data-root", type=Path, required=True, help=data_help)
    parser.add_argument(
        "--checkpoint", type=Path, required=True,
        help="official .pth checkpoint or a bifit checkpoint directory (bifit convert / save_pretrained)",
    )
    parser.add_argument("--output", type=Path, required=True, help="output folder (created; shared by all ranks)")
    parser.add_argument(
        "--text-encoder", default="roberta-base",
        help="tokenizer/config of the text encoder for an official .pth (Hugging Face id or local dir; "
        "default roberta-base); a bifit directory carries its own",
    )
    parser.add_argument("--device", default="auto",
                        help="auto (default: cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--short-side", type=int, default=360, help="shorter side of the model input in pixels (official: 360)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _clip_options(parser: argparse.ArgumentParser, clip_length: int | None, clip_help: str, per_pass_help: str) -> None:
    """The options of the protocols that cut videos into clips (Ref-YouTube-VOS, Ref-DAVIS17)."""
    parser.add_argument("--clip-length", type=int, default=clip_length, help=clip_help)
    parser.add_argument("--expressions-per-pass", type=int, default=4, help=per_pass_help)
    add_max_long_side(
        parser, "refuse frames whose resized longer side exceeds PX pixels (default 4096; the official protocol has "
        "no cap, and no frame of the benchmark comes near it)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict a benchmark with its official inference protocol (sharded over torchrun ranks)",
        description="Predict Ref-YouTube-VOS, Ref-DAVIS17, A2D-Sentences or JHMDB-Sentences exactly as the "
        "official inference does, write the official output layout, and evaluate where ground truth exists. "
        "Run under `torchrun --nproc_per_node N` to use N GPUs.",
    )
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    ytvos = add_command(sub, "ytvos", run_ytvos)
    _common(ytvos, "Ref-YouTube-VOS root (meta_expressions/, train/, valid/)")
    ytvos.add_argument("--split", choices=["valid", "heldout"], default="valid", help="what to predict (default valid)")
    ytvos.add_argument(
        "--heldout-every", type=int, default=20, help="held-out split: one training video in this many (default 20)"
    )
    _clip_options(
        ytvos, None,
        "cut videos into clips of this many frames, the query chosen per clip (default: whole video, official)",
        "expressions decoded at once on one backbone pass (memory/speed trade-off; default 4)",
    )

    davis = add_command(sub, "davis", run_davis)
    _common(davis, "prepared Ref-DAVIS17 root (output of `bifit data prepare davis`)")
    davis.add_argument(
        "--davis-root", type=Path, default=None,
        help="original DAVIS-2017 folder for the ground truth (default: <data-root>/DAVIS)",
    )
    _clip_options(davis, 24, "frames per clip (official: 24)", "expressions decoded at once (default 4)")

    for name, title in (("a2d", "A2D-Sentences (test split)"), ("jhmdb", "JHMDB-Sentences")):
        p = add_command(
            sub, name, run_a2d, help=f"{title}: all-query COCO predictions and the official metrics",
            description=f"Predicts every {title} sample on a clip centred on its annotated frame, writes "
            "<output>/predictions.json (COCO results, all queries) and <output>/metrics.json.",
        )
        _common(p, f"{title} root")
        p.add_argument("--num-frames", type=int, default=6, help="clip length around the annotated frame (official: 6)")
        p.add_argument("--max-size", type=int, default=640, help="cap on the longer input side (official: 640)")
        p.add_argument(
            "--batch-size", type=int, default=1,
            help="clips per forward pass (per GPU of the official run), zero-padded together to their largest "
            "size rounded up to a multiple of 32 as the official loader does; the released numbers used 2 "
            "(default 1: each clip alone, still padded to a multiple of 32)",
        )
        p.add_argument(
            "--official-gpus", type=int, default=1,
            help="form the batches as the official evaluation on this many GPUs does: each GPU batches its own "
            "contiguous block of samples, the last block filled up with the first samples, which are then "
            "predicted and scored twice; the released numbers used 4 (default 1). Independent of the number of "
            "processes of this run",
        )
        p.add_argument("--workers", type=int, default=2, help="data loading worker processes (default 2)")


def _load(args: argparse.Namespace) -> BifitModel:
    """The checkpoint's model in eval mode on the chosen device (imports kept lazy for `bifit --help`)."""
    from ..devices import resolve_device
    from ..modeling.checkpoint import load_model

    if not args.checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    if args.short_side < 1:
        raise ValueError(f"--short-side must be >= 1, got {args.short_side}")
    device = resolve_device(args.device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return load_model(args.checkpoint, text_encoder=args.text_encoder, device=device).eval()


def _check_positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def _check_clip_options(args: argparse.Namespace) -> None:
    from ..inference.core import check_count

    check_count(args.clip_length, "--clip-length")
    check_count(args.expressions_per_pass, "--expressions-per-pass")
    _check_positive(args.max_long_side, "--max-long-side")


def _predict_share(
    args: argparse.Namespace, shard: Shard, model: BifitModel, videos: list[EvalVideo], split_dir: Path,
    predict: Callable[..., int], label: str,
) -> None:
    """This rank's share of `videos` predicted into `split_dir` by a clip protocol (`predict_ytvos`,
    `predict_davis`) with the command's options; returns once every rank is done."""
    mine = shard.take(videos)
    written = predict(
        model, mine, split_dir, short_side=args.short_side, clip_length=args.clip_length,
        expressions_per_pass=args.expressions_per_pass, max_long_side=args.max_long_side,
        progress=not args.no_progress, desc=f"{label} [rank {shard.rank}/{shard.world_size}]",
    )
    print(f"rank {shard.rank}: {len(mine)} videos, {written} masks written to {split_dir}")
    shard.barrier()


def run_ytvos(args: argparse.Namespace) -> int:
    """Ref-YouTube-VOS: PNGs + submission.zip (valid) or local J&F (heldout)

    valid: <output>/valid/<video>/<exp_id>/<frame>.png and <output>/submission.zip (Annotations/...) for the
    competition server. heldout: predict the held-out training videos (sorted ids, every --heldout-every-th
    from the first) into <output>/heldout/ and evaluate J&F against the training annotations.
    """
    from ..data.ytvos import ytvos_heldout_videos, ytvos_valid_videos
    from ..inference.protocols import distributed_shard
    from ..inference.ytvos_predict import evaluate_ytvos_results, format_ytvos_results, predict_ytvos
    from ..inference.ytvos_predict import write_submission_zip, write_ytvos_results

    _check_clip_options(args)
    if not args.data_root.is_dir():
        raise FileNotFoundError(f"Ref-YouTube-VOS root not found: {args.data_root}")
    if args.split == "valid":
        videos = ytvos_valid_videos(args.data_root)
    else:
        videos = ytvos_heldout_videos(args.data_root, args.heldout_every)
    model = _load(args)
    split_dir = make_dirs(args.output / args.split)
    with distributed_shard() as shard:
        _predict_share(args, shard, model, videos, split_dir, predict_ytvos, f"ytvos {args.split}")
        if not shard.is_main:
            return 0
        if args.split == "valid":
            zip_path = write_submission_zip(split_dir, videos, args.output / "submission.zip")
            print(f"wrote {zip_path} ({len(videos)} videos); upload it to the Ref-YouTube-VOS competition server")
        else:
            results = evaluate_ytvos_results(videos, split_dir, progress=not args.no_progress)
            json_path, csv_path = write_ytvos_results(results, args.output, "heldout")
            print(format_ytvos_results(results, f"Ref-YouTube-VOS held-out (1 in {args.heldout_every} train videos)"))
            print(f"wrote {json_path} and {csv_path}")
    return 0


def run_davis(args: argparse.Namespace) -> int:
    """Ref-DAVIS17: per-annotator palette PNGs, then J&F of each and their mean

    Writes <output>/valid/anno_{0,1,2,3}/<video>/<frame>.png, evaluates each with the DAVIS-2017
    unsupervised protocol and reports their mean (the published Ref-DAVIS17 number).
    """
    from ..data.davis import davis_eval_videos
    from ..inference.protocols import distributed_shard
    from ..inference.davis_predict import evaluate_davis_annotators, format_davis_summary, predict_davis

    _check_clip_options(args)
    davis_root = args.davis_root if args.davis_root is not None else args.data_root / "DAVIS"
    # Fail before hours of prediction rather than at the evaluation.
    if not (davis_root / "Annotations_unsupervised").is_dir():
        raise FileNotFoundError(
            f"DAVIS-2017 ground truth not found: {davis_root / 'Annotations_unsupervised'} (pass --davis-root)"
        )
    videos = davis_eval_videos(args.data_root, "valid")
    model = _load(args)
    split_dir = make_dirs(args.output / "valid")
    with distributed_shard() as shard:
        _predict_share(args, shard, model, videos, split_dir, predict_davis, "davis")
        if not shard.is_main:
            return 0
        summary = evaluate_davis_annotators(davis_root, split_dir, progress=not args.no_progress)
        print(format_davis_summary(summary))
        print(f"wrote the DAVIS CSVs into {split_dir}/anno_*/ and the mean into {split_dir}")
    return 0


def run_a2d(args: argparse.Namespace) -> int:
    from ..inference.a2d_predict import build_eval_dataset, evaluate_predictions, format_a2d_metrics
    from ..inference.a2d_predict import ground_truth, official_batches, predict_batches
    from ..inference.protocols import distributed_shard

    _check_positive(args.num_frames, "--num-frames")
    _check_positive(args.max_size, "--max-size")
    _check_positive(args.batch_size, "--batch-size")
    _check_positive(args.official_gpus, "--official-gpus")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    dataset = build_eval_dataset(
        args.benchmark, args.data_root, num_frames=args.num_frames, short_side=args.short_side, max_size=args.max_size
    )
    batches = official_batches(len(dataset), args.batch_size, args.official_gpus)
    model = _load(args)
    make_dirs(args.output)
    with distributed_shard() as shard:
        positions = shard.take(range(len(batches)))
        predicted = predict_batches(
            model, dataset, [batches[i] for i in positions], num_workers=args.workers,
            progress=not args.no_progress, desc=f"{args.benchmark} [rank {shard.rank}/{shard.world_size}]",
        )
        part = args.output / f"predictions.rank{shard.rank}-of-{shard.world_size}.json"
        write_text(part, json.dumps(dict(zip(map(str, positions), predicted, strict=True))))
        shard.barrier()
        if not shard.is_main:
            return 0
        gt = ground_truth(args.benchmark, args.data_root)
        parts = [args.output / f"predictions.rank{r}-of-{shard.world_size}.json" for r in range(shard.world_size)]
        by_position: dict[int, list[dict[str, Any]]] = {}
        for path in parts:
            by_position.update((int(k), v) for k, v in json.loads(path.read_text()).items())
        # The official order: the batches as the official run gathers them.
        merged = [p for position in range(len(batches)) for p in by_position[position]]
        write_text(args.output / "predictions.json", json.dumps(merged))
        for path in parts:
            path.unlink()
        metrics = evaluate_predictions(gt, merged, progress=not args.no_progress)
        write_text(args.output / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(format_a2d_metrics(metrics, "A2D-Sentences" if args.benchmark == "a2d" else "JHMDB-Sentences"))
        print(f"wrote {args.output / 'predictions.json'} and {args.output / 'metrics.json'}")
    return 0
