"""Tests of the Ref-DAVIS17 conversion and loader on a tiny DAVIS-2017 folder."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bifit.data import transforms as T
from bifit.data.davis import (
    davis_eval_videos,
    expressions_by_annotation,
    prepare_davis,
    read_davis_expressions,
    ref_davis_train,
)

H, W = 40, 56


def write_davis(root: Path) -> tuple[Path, Path]:
    """DAVIS/ with train videos 'bike' (2 objects) and 'motorbike' (1), val video 'dogs' (2 objects);
    text annotations with the official misspelling 'motor-bike' and a latin-1 character."""
    davis = root / "DAVIS"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "train.txt").write_text("bike\nmotorbike\n")
    (davis / "ImageSets" / "2017" / "val.txt").write_text("dogs\n")
    objects = {"bike": 2, "motorbike": 1, "dogs": 2}
    for video, n_obj in objects.items():
        img_dir = davis / "JPEGImages" / "480p" / video
        ann_dir = davis / "Annotations_unsupervised" / "480p" / video
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for t in range(4):
            Image.new("RGB", (W, H), (10 * t, 100, 50)).save(img_dir / f"{t:05d}.jpg")
            ids = np.zeros((H, W), np.uint8)
            for k in range(1, n_obj + 1):
                ids[5 * k : 5 * k + 8, 4 + t : 20 + t] = k
            img = Image.fromarray(ids, mode="P")
            img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
            img.save(ann_dir / f"{t:05d}.png")
    semantics = {
        "bike": {"1": "person", "2": "bicycle"},
        "motorbike": {"1": "motorcycle"},
        "dogs": {"1": "dog", "2": "dog"},
    }
    (davis / "davis_semantics.json").write_text(json.dumps(semantics))

    text = root / "davis_text_annotations"
    text.mkdir()
    lines = {
        "Davis17_annot1.txt": [
            'bike 2 "a bicycle"',
            'bike 1 "a man riding"',
            'motor-bike 1 "a motorbike"',
            'dogs 1 "the left dog"',
            'dogs 2 "the right dog"',
        ],
        "Davis17_annot1_full_video.txt": [
            'bike 1 "man on a bike"',
            'bike 2 "the bike"',
            'motor-bike 1 "bike moving"',
            'dogs 1 "dog running left"',
            'dogs 2 "dog running right"',
        ],
        "Davis17_annot2.txt": [
            'bike 1 "person in a café"',
            'bike 2 "bicycle wheels"',
            'motorbike 1 "red motorbike"',
            'dogs 2 "small dog"',
            'dogs 1 "big dog"',
        ],
        "Davis17_annot2_full_video.txt": [
            'bike 1 "rider"',
            'bike 2 "cycle"',
            'motorbike 1 "moto"',
            'dogs 1 "dog one"',
            "",
            'dogs 2 "dog two"',
        ],
    }
    for name, content in lines.items():
        encoding = "latin-1" if "annot2" in name else "utf-8"
        (text / name).write_bytes(("\n".join(content) + "\n").encode(encoding))
    return davis, text


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    davis, text = write_davis(root)
    before = snapshot(davis)
    out = prepare_davis(davis, text, root / "ref-davis")
    return davis, out, before


def test_original_davis_folder_is_untouched(prepared):
    davis, _, before = prepared
    assert snapshot(davis) == before


def test_output_layout_links_to_davis(prepared):
    davis, out, _ = prepared
    link = out / "train" / "JPEGImages" / "bike"
    assert link.is_symlink() and link.resolve() == (davis / "JPEGImages" / "480p" / "bike").resolve()
    assert (out / "valid" / "Annotations" / "dogs" / "00003.png").is_file()
    assert (out / "train" / "meta.json").is_file() and (out / "valid" / "meta.json").is_file()
    meta = json.loads((out / "train" / "meta.json").read_text())["videos"]
    assert meta["bike"] == {"objects": {"1": {"category": "person"}, "2": {"category": "bicycle"}}}
    assert set(meta) == {"bike", "motorbike"}


def test_expression_order_is_annotator_first_full_per_object(prepared):
    _, out, _ = prepared
    exps = json.loads((out / "meta_expressions" / "train" / "meta_expressions.json").read_text())["videos"]
    bike = exps["bike"]
    assert bike["frames"] == ["00000", "00001", "00002", "00003"]
    assert [(e["obj_id"], e["exp"]) for _, e in sorted(bike["expressions"].items(), key=lambda kv: int(kv[0]))] == [
        ("1", "a man riding"),
        ("1", "man on a bike"),
        ("1", "person in a café"),
        ("1", "rider"),
        ("2", "a bicycle"),
        ("2", "the bike"),
        ("2", "bicycle wheels"),
        ("2", "cycle"),
    ]
    # misspelt 'motor-bike' lines are attached to 'motorbike'
    assert [e["exp"] for e in exps["motorbike"]["expressions"].values()] == [
        "a motorbike",
        "bike moving",
        "red motorbike",
        "moto",
    ]
    valid = json.loads((out / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    assert set(valid) == {"dogs"} and valid["dogs"]["expressions"]["6"]["exp"] == "small dog"


def test_eval_listing_groups_by_annotation(prepared):
    _, out, _ = prepared
    (dogs,) = davis_eval_videos(out, "valid")
    groups = expressions_by_annotation(dogs)
    assert len(groups) == 4 and all(len(g) == 2 for g in groups)
    assert [e.text for e in groups[2]] == ["big dog", "small dog"]
    assert [e.obj_id for e in groups[0]] == [1, 2]
    assert all(p.is_file() for p in dogs.mask_paths)
    with pytest.raises(ValueError, match="split"):
        davis_eval_videos(out, "test")


def test_training_dataset_reads_the_converted_layout(prepared):
    _, out, _ = prepared
    ds = ref_davis_train(out, num_frames=3, transforms=T.Compose([T.ToTensorNormalize()]))
    # 2 + 1 objects, 4 expressions each, ceil(4 / 3) = 2 anchors
    assert len(ds) == 3 * 4 * 2
    # labels enumerate the categories of both splits (bicycle, dog, motorcycle, person)
    assert ds.categories == {"bicycle": 0, "dog": 1, "motorcycle": 2, "person": 3}
    video, target = ds[0]
    assert video.shape == (3, 3, H, W)
    assert target["labels"].tolist() == [3, 3, 3]
    assert target["valid"].tolist() == [1, 1, 1]
    assert target["masks"].sum().item() > 0


def test_rerun_is_idempotent_and_guards(prepared, tmp_path):
    davis, out, before = prepared
    prepare_davis(davis, davis.parent / "davis_text_annotations", out)
    assert snapshot(davis) == before
    with pytest.raises(ValueError, match="differ"):
        prepare_davis(davis, davis.parent / "davis_text_annotations", davis)
    with pytest.raises(FileNotFoundError, match="Davis17_annot1.txt"):
        prepare_davis(davis, tmp_path, tmp_path / "out")


def test_copy_mode_copies(prepared, tmp_path):
    davis, _, _ = prepared
    out = prepare_davis(davis, davis.parent / "davis_text_annotations", tmp_path / "copy", link="copy")
    folder = out / "train" / "JPEGImages" / "bike"
    assert folder.is_dir() and not folder.is_symlink()
    assert sorted(os.listdir(folder)) == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"]


def test_read_expressions_sorts_by_object_id_string(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text('v 2 "two"\nv 10 "ten"\nv 1 "one"\n')
    assert [e["obj_id"] for e in read_davis_expressions(path, "utf-8")["v"]] == ["1", "10", "2"]
    path.write_text("v 1\n")
    with pytest.raises(ValueError, match="expected"):
        read_davis_expressions(path, "utf-8")


def test_dataset_item_masks_match_annotations(prepared):
    _, out, _ = prepared
    ds = ref_davis_train(out, num_frames=1, transforms=T.Compose([T.ToTensorNormalize()]))
    sample = ds.samples[0]
    _, target = ds[0]
    ids = np.array(Image.open(out / "train" / "Annotations" / sample.video / f"{sample.frames[0]}.png"))
    assert torch.equal(target["masks"][0], torch.from_numpy(ids == sample.obj_id))
