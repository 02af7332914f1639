"""`bifit data prepare davis`: build the Ref-DAVIS17 folder from DAVIS-2017 and the text annotations."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="prepare benchmark data (Ref-DAVIS17 conversion)",
        description="Dataset preparation steps the benchmarks need.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    prepare = actions.add_parser("prepare", help="convert a dataset into the layout bifit reads")
    datasets = prepare.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    davis = add_command(datasets, "davis", run_prepare_davis)
    davis.add_argument(
        "--davis-root", type=Path, required=True,
        help="DAVIS folder from DAVIS-2017-Unsupervised-trainval-480p.zip + DAVIS-2017_semantics-480p.zip",
    )
    davis.add_argument(
        "--text-annotations", type=Path, required=True,
        help="folder holding Davis17_annot1.txt, Davis17_annot1_full_video.txt, Davis17_annot2.txt, "
        "Davis17_annot2_full_video.txt (from davis_text_annotations.zip)",
    )
    davis.add_argument("--output", type=Path, required=True, help="Ref-DAVIS17 root to write (e.g. data/ref-davis)")
    davis.add_argument("--copy", action="store_true", help="copy the per-video folders instead of linking them")


def run_prepare_davis(args: argparse.Namespace) -> int:
    """Ref-DAVIS17: DAVIS-2017 + Davis17_annot*.txt -> Ref-YouTube-VOS layout

    Write OUTPUT/{train,valid}/{JPEGImages,Annotations,meta.json} and
    OUTPUT/meta_expressions/{train,valid}/meta_expressions.json as the official converter does, with 4
    expressions per object (annotator 1 first-frame, annotator 1 full-video, annotator 2 first-frame,
    annotator 2 full-video). Frame and annotation folders are symbolic links into DAVIS (or copies with
    --copy); the DAVIS folder itself is never modified, so the evaluation can keep reading it.
    """
    from ..data.davis import prepare_davis
    from ..data.ytvos import load_videos_dict

    root = prepare_davis(args.davis_root, args.text_annotations, args.output, link="copy" if args.copy else "symlink")
    for split in ("train", "valid"):
        videos = load_videos_dict(root / "meta_expressions" / split / "meta_expressions.json")
        expressions = sum(len(v["expressions"]) for v in videos.values())
        print(f"{split}: {len(videos)} videos, {expressions} expressions")
    print(f"wrote {root}")
    return 0
