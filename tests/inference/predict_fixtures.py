"""Tiny benchmark datasets in their distributed on-disk formats, a tiny checkpoint, and a fake
two-rank torch.distributed, for the prediction-command tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torch.distributed as dist
from PIL import Image

from media import write_a2d_instances, write_a2d_tables, write_video
import bifit

#: Frame size of every fixture video: odd sizes so that resizing, stride-4 rounding and cropping
#: all matter. The tests predict at a short side of SHORT_SIDE pixels to stay fast.
H, W = 30, 46
SHORT_SIDE = 40
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [7] * (252 * 3)


def save_checkpoint(directory: Path, text_encoder: Path) -> Path:
    """A seeded tiny BIFIT saved with ``save_pretrained``; class weights spread so query scores differ."""
    torch.manual_seed(0)
    model = bifit.build_model("tiny", text_encoder=str(text_encoder))
    with torch.no_grad():
        for head in model.class_embed:
            head.weight.normal_(0, 0.5)
    return bifit.save_pretrained(model, directory)


def random_frame(rng: np.random.Generator) -> Image.Image:
    base = rng.integers(0, 256, (H // 3 + 1, W // 3 + 1, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(base, np.ones((3, 3, 1), np.uint8))[:H, :W])


def save_ids(ids: np.ndarray, path: Path) -> None:
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(PALETTE)
    img.save(path)


def object_ids(t: int, objects: dict[int, range]) -> np.ndarray:
    """Id map of frame t: object k is a box at rows 4k.., moving right with t, present in its range."""
    ids = np.zeros((H, W), np.uint8)
    for k, frames in objects.items():
        if t in frames:
            ids[4 * k : 4 * k + 9, 3 + 2 * t : 18 + 2 * t] = k
    return ids


def write_ytvos(root: Path) -> Path:
    """Ref-YouTube-VOS: 4 training videos with annotations (every 5th frame number, palette PNGs);
    valid split of 3 videos ('t1' also in the test split, so excluded), one with 3 expressions."""
    rng = np.random.default_rng(0)
    train_exps, train_meta = {}, {}
    specs = {
        "tr_a": (4, {1: range(4), 2: range(2)}, [("a cat on the left", 1), ("the dog", 2)]),
        "tr_b": (3, {1: range(3)}, [("a person", 1)]),
        "tr_c": (3, {1: range(1, 3)}, [("the red car", 1), ("a car", 1)]),
        "tr_d": (2, {1: range(2)}, [("a bird", 1)]),
    }
    for video, (n, objects, exps) in specs.items():
        names = [f"{5 * i:05d}" for i in range(n)]
        (root / "train" / "JPEGImages" / video).mkdir(parents=True)
        (root / "train" / "Annotations" / video).mkdir(parents=True)
        for t, name in enumerate(names):
            random_frame(rng).save(root / "train" / "JPEGImages" / video / f"{name}.jpg")
            save_ids(object_ids(t, objects), root / "train" / "Annotations" / video / f"{name}.png")
        train_meta[video] = {"objects": {str(k): {"category": "cat", "frames": names} for k in objects}}
        train_exps[video] = {
            "expressions": {str(i): {"exp": e, "obj_id": str(o)} for i, (e, o) in enumerate(exps)},
            "frames": names,
        }
    (root / "train" / "meta.json").write_text(json.dumps({"videos": train_meta}))

    valid = {
        "v_one": (3, ["a man riding a bike", "the dog", "a car parked on the right"]),
        "v_two": (2, ["a woman holding an umbrella"]),
        "t1": (2, ["test video"]),
    }
    valid_exps = {}
    for video, (n, exps) in valid.items():
        names = [f"{5 * i:05d}" for i in range(n)]
        (root / "valid" / "JPEGImages" / video).mkdir(parents=True)
        for name in names:
            random_frame(rng).save(root / "valid" / "JPEGImages" / video / f"{name}.jpg")
        valid_exps[video] = {"expressions": {str(i): {"exp": e} for i, e in enumerate(exps)}, "frames": names}
    metas = {"train": train_exps, "valid": valid_exps, "test": {"t1": valid_exps["t1"]}}
    for split, videos in metas.items():
        (root / "meta_expressions" / split).mkdir(parents=True)
        (root / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    return root


def write_davis(root: Path, num_frames: int = 5) -> tuple[Path, Path]:
    """DAVIS-2017 folder (train 'bike' with 1 object, val 'dogs' with 2 and 'cows' with 1) and the
    four Ref-DAVIS17 text annotation files."""
    rng = np.random.default_rng(1)
    davis = root / "DAVIS"
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "train.txt").write_text("bike\n")
    (davis / "ImageSets" / "2017" / "val.txt").write_text("dogs\ncows\n")
    objects = {"bike": 1, "dogs": 2, "cows": 1}
    for video, n_obj in objects.items():
        img_dir = davis / "JPEGImages" / "480p" / video
        ann_dir = davis / "Annotations_unsupervised" / "480p" / video
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for t in range(num_frames):
            random_frame(rng).save(img_dir / f"{t:05d}.jpg")
            save_ids(object_ids(t, {k: range(num_frames) for k in range(1, n_obj + 1)}), ann_dir / f"{t:05d}.png")
    semantics = {video: {str(k): "dog" for k in range(1, n + 1)} for video, n in objects.items()}
    (davis / "davis_semantics.json").write_text(json.dumps(semantics))

    text = root / "davis_text_annotations"
    text.mkdir()
    files = {"Davis17_annot1.txt": "red", "Davis17_annot1_full_video.txt": "blue", "Davis17_annot2.txt": "green",
             "Davis17_annot2_full_video.txt": "yellow"}
    for name, word in files.items():
        lines = [
            f'bike 1 "a man riding a {word} bike"',
            f'dogs 1 "the {word} dog to the left"',
            f'dogs 2 "a {word} dog on the right"',
            f'cows 1 "the {word} car parked"',
        ]
        (text / name).write_text("\n".join(lines) + "\n", encoding="latin-1" if "annot2" in name else "utf-8")
    return davis, text


A2D_VIDEOS = {  # video -> (subset, frames, {annotated frame (1-based): {instance: (row, col)}})
    "trA": (0, 5, {2: {1: (4, 6)}}),
    "teA": (1, 7, {2: {1: (3, 4), 2: (14, 20)}, 6: {1: (8, 10)}}),
    "teB": (1, 3, {1: {4: (10, 12)}}),
}
A2D_QUERIES = [("trA", "1", "a man walking"), ("teA", "1", "The dog running LEFT"), ("teA", "2", "a cat"),
               ("teB", "4", "a bird flying")]



def box_mask(row: int, col: int) -> np.ndarray:
    """A 9 x 12 box of an A2D instance at (row, col) of an [H, W] frame."""
    mask = np.zeros((H, W), np.uint8)
    mask[row : row + 9, col : col + 12] = 1
    return mask


def write_a2d(root: Path) -> Path:
    """A2D-Sentences: mp4 clips, h5 instance masks (MATLAB order), csv/txt annotations; 'trA' is a
    training video, 'teA' (2 annotated frames, 2 instances) and 'teB' test videos."""
    rng = np.random.default_rng(2)
    (root / "Release" / "clips320H").mkdir(parents=True)
    masks_dir = root / "text_annotations" / "a2d_annotation_with_instances"
    rows = []
    for video, (subset, n, frames) in A2D_VIDEOS.items():
        write_video(
            root / "Release" / "clips320H" / f"{video}.mp4",
            np.stack([np.asarray(random_frame(rng)) for _ in range(n)]),
        )
        rows.append([video, "11", "0", "1", str(H), str(W), str(n), str(len(frames)), str(subset)])
        for frame, instances in frames.items():
            write_a2d_instances(masks_dir / video / f"{frame:05d}.h5",
                                {i: box_mask(row, col) for i, (row, col) in instances.items()})
    write_a2d_tables(root, rows, A2D_QUERIES, "\n")
    return root


def write_jhmdb(root: Path) -> Path:
    """JHMDB-Sentences: PNG frames, puppet_mask.mat, annotation txt and the samples metadata."""
    rng = np.random.default_rng(3)
    videos = {"wave": ("girl_waving", 6), "run": ("man_running", 4)}
    metadata = []
    for action, (video, n) in videos.items():
        frames = root / "Rename_Images" / action / video
        frames.mkdir(parents=True)
        for i in range(1, n + 1):
            random_frame(rng).save(frames / f"{i:05d}.png")
        masks = np.zeros((H, W, n), np.uint8)
        for t in range(n):
            masks[4 + t : 16 + t, 5 : 25 + t, t] = 1
        (root / "puppet_mask" / action / video).mkdir(parents=True)
        scipy.io.savemat(root / "puppet_mask" / action / video / "puppet_mask.mat", {"part_mask": masks})
        for chosen in (1, n - 1):
            metadata.append([
                video,
                f"/data/jhmdb/Rename_Images/{action}/{video}/{chosen:05d}.png",
                f"/data/jhmdb/puppet_mask/{action}/{video}/puppet_mask.mat",
                n,
                f"the {video.replace('_', ' ')}",
            ])
    (root / "jhmdb_annotation.txt").write_text("video_id,query\ngirl_waving,a girl waving\nman_running,a man running\n")
    (root / "jhmdb_sentences_samples_metadata.json").write_text(json.dumps(metadata))
    return root


def fake_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world_size: int, barriers: list[int]) -> None:
    """Make this process look like rank ``rank`` of a torchrun launch of ``world_size`` processes
    (spawning real ranks costs tens of seconds on a small machine); barrier calls are recorded."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: None)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world_size)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(rank))

