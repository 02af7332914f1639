"""Ref-DAVIS17: conversion of DAVIS-2017 + the text annotations to the Ref-YouTube-VOS layout.

Inputs (as unzipped from ``DAVIS-2017-Unsupervised-trainval-480p.zip``,
``DAVIS-2017_semantics-480p.zip`` and ``davis_text_annotations.zip``)::

    <davis_root>/ImageSets/2017/{train,val}.txt
    <davis_root>/JPEGImages/480p/<video>/<frame>.jpg
    <davis_root>/Annotations_unsupervised/480p/<video>/<frame>.png
    <davis_root>/davis_semantics.json
    <annotations_dir>/Davis17_annot{1,2}.txt, Davis17_annot{1,2}_full_video.txt

:func:`prepare_davis` writes, under ``output_root``, what the official converter produces::

    train/{JPEGImages,Annotations}/<video>   valid/{JPEGImages,Annotations}/<video>
    train/meta.json                          valid/meta.json
    meta_expressions/{train,valid}/meta_expressions.json

The per-video frame and annotation folders are symbolic links to the DAVIS folders (or copies
with ``link="copy"``); the official converter moves them instead, which leaves DAVIS unusable
for the evaluation toolkit until it is unzipped again. ``davis_root`` is never modified.

Expression order per video: for object k (sorted by object id), ids 4k..4k+3 are [annotator 1
first-frame, annotator 1 full-video, annotator 2 first-frame, annotator 2 full-video].
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from bifit.data.names import safe_name
from bifit.data.ytvos import (
    EvalVideo,
    Expression,
    RefVOSDataset,
    category_ids,
    load_json,
    load_videos_dict,
    make_eval_video,
)

#: The four text files, in the order their expressions are interleaved per object.
ANNOTATION_FILES = (
    ("Davis17_annot1.txt", "utf-8"),
    ("Davis17_annot1_full_video.txt", "utf-8"),
    ("Davis17_annot2.txt", "latin-1"),
    ("Davis17_annot2_full_video.txt", "latin-1"),
)
#: Misspelt video names in the text annotations.
VIDEO_NAME_FIXES = {"clasic-car": "classic-car", "dog-scale": "dogs-scale", "motor-bike": "motorbike"}
#: Output split name -> DAVIS ImageSets file.
SPLITS = {"train": "train.txt", "valid": "val.txt"}
NUM_ANNOTATIONS = len(ANNOTATION_FILES)


def read_davis_expressions(path: Path, encoding: str) -> dict[str, list[dict[str, str]]]:
    """One annotation file as ``{video: [{"exp", "obj_id"}, ...]}``, sorted by object id.

    Each line is ``<video> <obj_id> "<expression>"``; the outer quotes are dropped. The sort is by
    the id *string* and stable, as in the official converter.
    """
    if not path.is_file():
        raise FileNotFoundError(f"DAVIS text annotation not found: {path}")
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not valid {encoding} text: {exc}") from None
    videos: dict[str, list[dict[str, str]]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise ValueError(f"{path}:{number}: expected '<video> <object id> \"<expression>\"', got {line!r}")
        video = VIDEO_NAME_FIXES.get(parts[0], parts[0])
        videos.setdefault(video, []).append({"exp": " ".join(parts[2:])[1:-1], "obj_id": parts[1]})
    return {video: sorted(exps, key=lambda e: e["obj_id"]) for video, exps in videos.items()}


def _read_split(davis_root: Path, filename: str) -> list[str]:
    path = davis_root / "ImageSets" / "2017" / filename
    if not path.is_file():
        raise FileNotFoundError(f"DAVIS split file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [safe_name(name, "sequence name", path) for name in names]


def _place(source: Path, dest: Path, link: str) -> None:
    if not source.is_dir():
        raise FileNotFoundError(f"DAVIS folder not found: {source}")
    if dest.is_symlink() or dest.exists():
        if dest.is_symlink() and dest.resolve() == source.resolve():
            return
        raise FileExistsError(f"{dest} already exists; remove it or choose another output_root")
    if link == "symlink":
        dest.symlink_to(source.resolve(), target_is_directory=True)
    else:
        shutil.copytree(source, dest)


def prepare_davis(
    davis_root: str | os.PathLike[str],
    annotations_dir: str | os.PathLike[str],
    output_root: str | os.PathLike[str],
    link: Literal["symlink", "copy"] = "symlink",
) -> Path:
    """Convert DAVIS-2017 and its text annotations to the Ref-YouTube-VOS layout (see module doc).

    Args:
        davis_root: the ``DAVIS`` folder (with ``ImageSets``, ``JPEGImages``, ...); read only.
        annotations_dir: folder holding the four ``Davis17_annot*.txt`` files.
        output_root: where to write; created if needed. Re-running on the same inputs is a no-op
            for existing links and rewrites the JSON files.
        link: ``"symlink"`` (default) or ``"copy"`` for the per-video folders.

    Returns:
        ``output_root``.
    """
    if link not in ("symlink", "copy"):
        raise ValueError(f"link must be 'symlink' or 'copy', got {link!r}")
    davis_root, annotations_dir, output_root = Path(davis_root), Path(annotations_dir), Path(output_root)
    if not davis_root.is_dir():
        raise FileNotFoundError(f"DAVIS root not found: {davis_root}")
    if output_root.resolve() == davis_root.resolve():
        raise ValueError("output_root must differ from davis_root (the DAVIS folder is left untouched)")
    semantics = load_json(davis_root / "davis_semantics.json")
    annotations = [read_davis_expressions(annotations_dir / name, enc) for name, enc in ANNOTATION_FILES]

    for split, split_file in SPLITS.items():
        videos = _read_split(davis_root, split_file)
        split_dir = output_root / split
        for sub in ("JPEGImages", "Annotations"):
            (split_dir / sub).mkdir(parents=True, exist_ok=True)
        objects_meta: dict[str, Any] = {}
        expressions_meta: dict[str, Any] = {}
        for video in videos:
            _place(davis_root / "JPEGImages" / "480p" / video, split_dir / "JPEGImages" / video, link)
            _place(davis_root / "Annotations_unsupervised" / "480p" / video, split_dir / "Annotations" / video, link)
            if video not in semantics:
                raise ValueError(f"video {video} is missing from {davis_root / 'davis_semantics.json'}")
            num_objects = len(semantics[video])
            objects_meta[video] = {
                "objects": {str(i): {"category": semantics[video][str(i)]} for i in range(1, num_objects + 1)}
            }
            missing = [name for (name, _), ann in zip(ANNOTATION_FILES, annotations, strict=True) if video not in ann]
            if missing:
                raise ValueError(f"video {video} has no expressions in {', '.join(missing)}")
            expressions: dict[str, dict[str, str]] = {}
            # zip stops at the shortest list, as the official converter does when annotators
            # described different numbers of objects.
            for per_object in zip(*(ann[video] for ann in annotations), strict=False):
                for exp in per_object:
                    expressions[str(len(expressions))] = dict(exp)
            frames = sorted(p.split(".")[0] for p in os.listdir(split_dir / "JPEGImages" / video))
            expressions_meta[video] = {"expressions": expressions, "frames": frames}
        (split_dir / "meta.json").write_text(json.dumps({"videos": objects_meta}))
        meta_dir = output_root / "meta_expressions" / split
        meta_dir.mkdir(parents=True, exist_ok=True)
        (meta_dir / "meta_expressions.json").write_text(json.dumps({"videos": expressions_meta}))
    return output_root


def ref_davis_train(root: str | os.PathLike[str], **kwargs: Any) -> RefVOSDataset:
    """Ref-DAVIS17 training clips from a :func:`prepare_davis` output (``kwargs`` as in
    :class:`RefVOSDataset`). Labels enumerate the categories of both splits, as the official
    DAVIS label table does."""
    root = Path(root)
    if not (root / "train" / "meta.json").is_file():
        raise FileNotFoundError(f"{root} is not a prepared Ref-DAVIS17 folder (run prepare_davis first)")
    if "categories" not in kwargs:
        metas = [root / s / "meta.json" for s in SPLITS if (root / s / "meta.json").is_file()]
        kwargs["categories"] = category_ids(metas)
    return RefVOSDataset(root / "train", root / "meta_expressions" / "train" / "meta_expressions.json", **kwargs)


def davis_eval_videos(root: str | os.PathLike[str], split: str = "valid") -> list[EvalVideo]:
    """Videos of a prepared Ref-DAVIS17 split, in file order, with expressions and mask paths.

    Expression ``obj * 4 + k`` is annotation k of object ``obj``; see :func:`expressions_by_annotation`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    root = Path(root)
    source = root / "meta_expressions" / split / "meta_expressions.json"
    videos = load_videos_dict(source)
    images_dir, annotations_dir = root / split / "JPEGImages", root / split / "Annotations"
    return [
        make_eval_video(v, data, images_dir, annotations_dir, sort_frames=False, source=source)
        for v, data in videos.items()
    ]


def expressions_by_annotation(video: EvalVideo) -> list[list[Expression]]:
    """Group a Ref-DAVIS17 video's expressions into the 4 annotation sets, one per object each.

    Returns:
        4 lists (annotator 1 first-frame, annotator 1 full-video, annotator 2 first-frame,
        annotator 2 full-video) of ``num_objects`` :class:`Expression` each.
    """
    num_objects = len(video.expressions) // NUM_ANNOTATIONS
    return [
        [video.expressions[obj * NUM_ANNOTATIONS + k] for obj in range(num_objects)] for k in range(NUM_ANNOTATIONS)
    ]
