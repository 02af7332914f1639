"""Run the official inference and evaluation scripts end to end on tiny datasets; record their outputs.

The fixture (tests/fixtures/protocol/) lets tests/inference/test_official_protocols.py run
`bifit predict ytvos|davis|a2d|jhmdb` exactly as a user would and compare every output file with
what the official scripts of LANMNG/BIFIT wrote for the same inputs and the same weights:

1. tiny datasets in the official layouts are written under `<output>/data` (committed with the
   fixture, so the tests read the very bytes the official code read):
   - `ref-youtube-vos`: a valid split of landscape, portrait and odd-sized videos, plus one video
     that is also listed in the test split (the official script skips it);
   - `ref-davis`: DAVIS-2017 as unzipped (`DAVIS/`) and the four text annotation files; `blackswan`
     (the official script takes its palette) and a 25-frame video (two 24-frame clips) with two
     objects, of which annotator 2 describes only one;
   - `a2d_sentences`: lossless H.264 clips of four sizes, `.h5` instance masks in MATLAB order, the
     annotation CSVs, the MTTR sample lists and the COCO-format ground truth;
   - `jhmdb_sentences`: PNG frames of landscape and portrait sizes, `puppet_mask.mat`, the MTTR
     samples metadata and the COCO-format ground truth;
2. the official model (released configuration) gets the seeded weights of
   `tests/seeded_weights.seeded_tensor` plus one shifted bias (`ADJUSTMENTS`: the bias of the dynamic
   mask head's last layer, so that about half of the mask pixels are foreground instead of 96%) and
   is saved as an official checkpoint;
3. the official scripts run on CPU: `inference_ytvos.py`; `tools/data/convert_davis_to_ytvos.py`,
   `inference_davis.py` and `eval_davis.py` on each annotator's folder; `main.py --eval` for
   A2D-Sentences and JHMDB-Sentences with batch sizes 1 and 2, and (A2D) the batches of a 3-GPU run.
   A random model's masks miss drawn objects, which would leave every metric at zero, so the ground
   truth is first derived from the official predictions, each mask unchanged, shifted by two pixels
   or eroded by one in turn: the top-scoring mask of each A2D/JHMDB sample (from a first
   `main.py --eval` with batch size 1) and each described object of annotator 1's DAVIS id maps;
4. their PNGs, predictions, metrics and the converted Ref-DAVIS17 meta files go to
   `<output>/official`, the settings to `<output>/manifest.json`.

Environment (transformers 4.x, which the official code needs, and scikit-image, which the DAVIS
toolkit imports, shadowing nothing of the project's own packages)::

    pip install --target /tmp/tf4 --no-deps "transformers==4.46.*" "tokenizers>=0.20,<0.21" \
        "huggingface_hub<1.0" requests urllib3 idna charset_normalizer certifi einops \
        scikit-image lazy_loader imageio tifffile networkx
    PYTHONPATH=/tmp/tf4 python scripts/make_protocol_fixtures.py --official-root /path/to/BIFIT

Nothing of the official code is copied or edited: it is imported from `--official-root` and patched
at runtime only, as follows.

- As in scripts/make_official_model_fixture.py (whose helpers this script imports): the official
  pure-PyTorch `ms_deform_attn_core_pytorch` instead of the CUDA extension, a ResNet-50 without
  downloaded ImageNet weights, the tiny local RoBERTa of tests/fixtures/tiny_roberta instead of
  `roberta-base`, a stand-in for fvcore's `c2_xavier_fill` (an initialisation the checkpoint
  overwrites).
- Stand-ins for `matplotlib` and `imgaug` when they are not installed: imported by the official
  scripts and the Ref-COCO loaders, never called on these paths.
- `torchvision.io.read_video` (the A2D loader's video reader) no longer exists in torchvision
  >= 0.24: a PyAV reader returning what torchvision's pyav backend returned for a whole file, every
  frame in order as uint8 [T, H, W, 3] RGB.
- `inference_ytvos.py` and `inference_davis.py` run one worker process per GPU
  (`multiprocessing.Process` over a `Manager().dict()`): with `--ngpu 1` the worker runs inline in
  this process instead (a forked child of a process that has used torch's thread pool can hang), and
  `torch.cuda.set_device`, which the worker calls, does nothing on CPU.
- `inference_ytvos.py` asserts that there are 202 validation videos: it is executed with
  assertions off (compiled with `optimize=1`).
- `inference_ytvos.py` and `inference_davis.py` resize frames to a shorter side of 360 in a
  module-level transform: its `Resize(360)` is replaced by `Resize(SHORT_SIDE)` (the rest of the
  Compose unchanged) to keep the fixture fast; the tests run bifit with `--short-side SHORT_SIDE`.
  The A2D/JHMDB evaluation transform hard-codes `RandomResize([360], max_size=640)` (the `--max_size`
  option reaches only the training transforms): its first step is replaced by
  `RandomResize([360], max_size=MAX_SIZE)`; the tests run bifit with `--max-size MAX_SIZE`.
- The A2D loader computes (unused) mask areas with `np.float`, an alias of `float` that NumPy 1.24
  removed: the alias is put back while the official code runs.
- **`engine.evaluate_a2d` crashes as shipped**: `util.misc.targets_to` calls `.to(device)` on every
  target entry except `caption`, `dataset_name` and `original_id`, so on the string `image_id`
  (`'str' object has no attribute 'to'`). It is replaced by the variant commented out beside it,
  which also skips `image_id`.
- `evaluate_a2d` ends with `dist.barrier()`: a one-process gloo group is created around it.
- The JHMDB loader prefixes the metadata paths with `data/`: it runs in a working directory whose
  `data/jhmdb_sentences` is the dataset.
- The 3-GPU A2D run is emulated in one process: for each rank, the data loader of `main.py`'s
  distributed branch (`samplers.DistributedSampler(dataset_val, shuffle=False)` with
  `num_replicas=3, rank=r`, batch size 2) goes through `evaluate_a2d`, whose `utils.all_gather`
  collects the ranks' predictions in rank order and lets the last rank evaluate them all.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import runpy
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
sys.path.insert(0, str(REPO_ROOT / "tests"))
import make_official_model_fixture as model_fixture  # noqa: E402
from media import write_a2d_instances, write_a2d_tables  # noqa: E402
from seeded_weights import official_state_dict  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "tests" / "fixtures" / "protocol"
SEED = 0
# Seeded weights put 96% of the mask logits above 0 (median about 3); this moves them to about half.
ADJUSTMENTS = [{"key": "controller.layers.2.bias", "index": -1, "add": -3.0}]
SHORT_SIDE = 32
MAX_SIZE = 80
# Flags of the official README's commands (plus the fixture's device and sizes).
YTVOS_FLAGS = ["--with_box_refine", "--binary", "--freeze_text_encoder", "--backbone", "resnet50"]
A2D_FLAGS = ["--with_box_refine", "--freeze_text_encoder", "--backbone", "resnet50", "--eval"]
# (name, batch size per GPU, GPUs)
A2D_RUNS = [("b1_gpus1", 1, 1), ("b2_gpus1", 2, 1), ("b2_gpus3", 2, 3)]
JHMDB_RUNS = [("b1_gpus1", 1, 1), ("b2_gpus1", 2, 1)]
# (samples, batch size, GPUs) whose official sampler batches are recorded.
SAMPLER_CASES = [(7, 2, 3), (7, 2, 1), (10, 3, 4), (5, 1, 2), (1295, 2, 4), (2784, 2, 4)]

OBJECT_COLOURS = np.array([[200, 40, 40], [40, 160, 60], [50, 70, 210], [220, 200, 40]], dtype=np.float64)


# ---------------------------------------------------------------------------------------- datasets
def smooth_frame(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3]: a coarse random grid enlarged bilinearly (tiny and compressible)."""
    coarse = rng.integers(0, 256, (max(height // 6, 2), max(width // 6, 2), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def paint(frame: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    out = frame.copy()
    out[mask] = (0.3 * out[mask] + 0.7 * colour).astype(np.uint8)
    return out


def davis_palette() -> list[int]:
    """The PASCAL VOC colour map DAVIS annotations use, flat RGB (256 colours).

    Written here, not imported from `bifit.inference.protocols`: the official script copies the palette
    of these input annotations into its PNGs, so a palette taken from bifit would make the fixture agree
    with bifit's output even if bifit's palette were wrong.
    """
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def write_ytvos(root: Path) -> None:
    """Ref-YouTube-VOS valid split: frames every 5th number, expressions as in the competition files."""
    rng = np.random.default_rng(10)
    videos = {  # video -> ((H, W), frames, expressions, also in the test split)
        "a1landscape": ((45, 71), 4, ["a man riding a bike", "The  dog on the LEFT"], False),
        "b2portrait": ((67, 39), 3, ["the woman holding an umbrella"], False),
        "c3small": ((30, 37), 3, ["a red car turning right", "the bird", "a person standing still"], False),
        "t4test": ((45, 71), 2, ["a test video"], True),
    }
    valid, test = {}, {}
    for video, ((h, w), n, expressions, in_test) in videos.items():
        names = [f"{5 * i:05d}" for i in range(n)]
        folder = root / "valid" / "JPEGImages" / video
        folder.mkdir(parents=True)
        for t, name in enumerate(names):
            frame = paint(smooth_frame(rng, h, w), ellipse(h, w, h / 2, w / 3 + 2 * t, h / 4, w / 5), OBJECT_COLOURS[0])
            Image.fromarray(frame).save(folder / f"{name}.jpg", quality=90)
        entry = {"expressions": {str(i): {"exp": e} for i, e in enumerate(expressions)}, "frames": names}
        valid[video] = entry
        if in_test:
            test[video] = entry
    for split, entries in (("valid", valid), ("test", test)):
        (root / "meta_expressions" / split).mkdir(parents=True)
        (root / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps({"videos": entries}))


def write_davis(root: Path) -> None:
    """DAVIS-2017 (unsupervised annotations, 480p folder names) and the Ref-DAVIS17 text annotations."""
    rng = np.random.default_rng(11)
    davis = root / "DAVIS"
    videos = {  # video -> ((H, W), frames, objects, split)
        "bike-train": ((45, 80), 2, 1, "train"),
        "blackswan": ((45, 80), 3, 1, "val"),
        "dogs-jump": ((45, 80), 25, 2, "val"),
    }
    palette = davis_palette()
    for video, ((h, w), n, objects, _) in videos.items():
        images = davis / "JPEGImages" / "480p" / video
        annotations = davis / "Annotations_unsupervised" / "480p" / video
        images.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for t in range(n):
            frame = smooth_frame(rng, h, w)
            ids = np.zeros((h, w), np.uint8)
            for k in range(1, objects + 1):
                mask = ellipse(h, w, h * k / (objects + 1), 8 + 12 * k + t, h / 6, w / 8)
                frame = paint(frame, mask, OBJECT_COLOURS[k])
                ids[mask] = k
            Image.fromarray(frame).save(images / f"{t:05d}.jpg", quality=90)
            png = Image.fromarray(ids, mode="P")
            png.putpalette(palette)
            png.save(annotations / f"{t:05d}.png")
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    for split in ("train", "val"):
        names = [v for v, spec in videos.items() if spec[3] == split]
        (davis / "ImageSets" / "2017" / f"{split}.txt").write_text("".join(f"{v}\n" for v in names))
    semantics = {"bike-train": {"1": "bike"}, "blackswan": {"1": "swan"}, "dogs-jump": {"1": "dog", "2": "person"}}
    (davis / "davis_semantics.json").write_text(json.dumps(semantics))

    text = root / "davis_text_annotations"
    text.mkdir()
    lines = {  # file -> encoding, lines; annotator 2 describes only one of the two dogs-jump objects
        "Davis17_annot1.txt": ("utf-8", [
            'bike-train 1 "a man riding a bike"', 'blackswan 1 "a black swan"', 'dogs-jump 2 "a man in a red shirt"',
            'dogs-jump 1 "a brown dog"',
        ]),
        "Davis17_annot1_full_video.txt": ("utf-8", [
            'bike-train 1 "a man riding a bike on a road"', 'blackswan 1 "a black swan swimming in a pond"',
            'dogs-jump 1 "a brown dog jumping over a fence"', 'dogs-jump 2 "a man in a red shirt walking"',
        ]),
        "Davis17_annot2.txt": ("latin-1", [
            'bike-train 1 "the cyclist"', 'blackswan 1 "the swan"', 'dogs-jump 1 "the dog near the café"',
        ]),
        "Davis17_annot2_full_video.txt": ("latin-1", [
            'bike-train 1 "the cyclist riding"', 'blackswan 1 "the swan moving left"',
            'dogs-jump 1 "a  dog running past the café"',
        ]),
    }
    for name, (encoding, content) in lines.items():
        (text / name).write_bytes(("\n".join(content) + "\n").encode(encoding))


def write_lossless_mp4(path: Path, frames: np.ndarray, fps: int = 24) -> None:
    """Lossless H.264 (RGB): every decoder gives back exactly these frames."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.time_base = Fraction(1, fps)
        stream.options = {"qp": "0"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _coco_ground_truth(samples: list[tuple[str, np.ndarray]], with_bbox: bool) -> dict[str, Any]:
    """The COCO-format ground truth MTTR's scripts write: one image and one annotation per sample."""
    from pycocotools import mask as mask_utils

    annotations = []
    for index, (image_id, mask) in enumerate(samples, start=1):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotation = {
            "id": index, "image_id": image_id, "category_id": 1,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)), "iscrowd": 0,
        }
        if with_bbox:
            ys, xs = np.nonzero(mask)
            x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
            annotation["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        annotations.append(annotation)
    return {
        "categories": [{"id": 1, "name": "dummy_class"}],
        "images": [{"id": image_id, "height": int(m.shape[0]), "width": int(m.shape[1])} for image_id, m in samples],
        "annotations": annotations,
    }


A2D_TEST_SAMPLES = "a2d_sentences_single_frame_test_annotations.json"
A2D_GROUND_TRUTH = "a2d_sentences_test_annotations_in_coco_format.json"
JHMDB_METADATA = "jhmdb_sentences_samples_metadata.json"
JHMDB_GROUND_TRUTH = "jhmdb_sentences_gt_annotations_in_coco_format.json"


def _a2d_h5_path(root: Path, video: str, frame_idx: int) -> Path:
    return root / "text_annotations" / "a2d_annotation_with_instances" / video / f"{frame_idx:05d}.h5"


def _read_a2d_h5(path: Path) -> dict[int, np.ndarray]:
    with h5py.File(path, "r") as f:
        instances = [int(i) for i in np.asarray(f["instance"]).reshape(-1)]
        masks = np.asarray(f["reMask"])
    masks = masks[None] if masks.ndim == 2 else masks
    return {i: m.T != 0 for i, m in zip(instances, masks, strict=True)}


def write_a2d(root: Path) -> None:
    """A2D-Sentences: clips320H, videoset.csv, instance masks and text annotations, MTTR's JSON files."""
    rng = np.random.default_rng(12)
    videos = {  # video -> ((H, W), frames, subset, {annotated frame (1-based): {instance: (cy, cx, ry, rx)}})
        "trainVid01": ((30, 44), 6, 0, {3: {1: (15, 20, 6, 8)}}),
        "landVid02": ((30, 44), 9, 1, {2: {1: (12, 14, 6, 7), 2: (20, 32, 5, 8)}, 7: {1: (14, 18, 7, 7)}}),
        "oddVid03": ((33, 47), 8, 1, {4: {0: (16, 23, 8, 12)}}),
        "portVid04": ((50, 34), 7, 1, {1: {3: (20, 16, 10, 8)}, 7: {3: (28, 18, 12, 9)}}),
        "squareVid05": ((40, 40), 6, 1, {6: {0: (22, 18, 9, 10)}}),
    }
    # a2d_annotation.txt rows, in file order: consecutive test samples alternate between canvases
    # (64x96, 96x64, 96x96 at MAX_SIZE 80), so that every batch of two pads its clips differently.
    queries = [
        ("trainVid01", "1", "a cat jumping"),
        ("oddVid03", "0", "a red car turning"),
        ("portVid04", "3", "a bird flying up"),
        ("landVid02", "1", "a man walking on the left"),
        ("squareVid05", "0", "a ball rolling"),
        ("landVid02", "2", "The DOG  running"),
    ]
    clips = root / "Release" / "clips320H"
    clips.mkdir(parents=True)
    rows = []
    for video, ((h, w), n, subset, annotated) in videos.items():
        first = next(iter(annotated.values()))
        frames = []
        for t in range(n):
            frame = smooth_frame(rng, h, w)
            for k, (cy, cx, ry, rx) in enumerate(first.values()):
                frame = paint(frame, ellipse(h, w, cy, cx + t, ry, rx), OBJECT_COLOURS[k])
            frames.append(frame)
        write_lossless_mp4(clips / f"{video}.mp4", np.stack(frames))
        rows.append([video, "11", "0.0", "1.0", str(h), str(w), str(n), str(len(annotated)), str(subset)])
        for frame_idx, instances in annotated.items():
            write_a2d_instances(_a2d_h5_path(root, video, frame_idx),
                                {i: ellipse(h, w, cy, cx + frame_idx - 1, ry, rx) for i, (cy, cx, ry, rx) in instances.items()})
    write_a2d_tables(root, rows, queries, "")

    # MTTR's sample lists: per annotation row (file order), per annotated frame (sorted) holding the instance.
    for subset_name, subset in (("train", 0), ("test", 1)):
        samples = [
            [query.lower(), video, frame_idx, int(instance)]
            for video, instance, query in queries
            if videos[video][2] == subset
            for frame_idx in sorted(videos[video][3])
            if int(instance) in videos[video][3][frame_idx]
        ]
        (root / f"a2d_sentences_single_frame_{subset_name}_annotations.json").write_text(json.dumps(samples))
    set_a2d_ground_truth(root, {})


def set_a2d_ground_truth(root: Path, masks: dict[str, np.ndarray]) -> None:
    """Replace the masks of test samples (image id -> bool [H, W]) in their .h5 files; rewrite the COCO ground truth."""
    samples = json.loads((root / A2D_TEST_SAMPLES).read_text())
    ground_truth = []
    for _, video, frame_idx, instance in samples:
        image_id = f"v_{video}_f_{frame_idx}_i_{instance}"
        path = _a2d_h5_path(root, video, frame_idx)
        instances = _read_a2d_h5(path)
        if image_id in masks:
            instances[instance] = masks[image_id]
            write_a2d_instances(path, instances)
        ground_truth.append((image_id, instances[instance]))
    (root / A2D_GROUND_TRUTH).write_text(json.dumps(_coco_ground_truth(ground_truth, with_bbox=True)))


def _jhmdb_samples(root: Path) -> list[tuple[str, Path, int]]:
    """(image id, puppet_mask.mat, 1-based frame) of every sample of the metadata."""
    samples = []
    for video, frame_path, masks_path, _, _ in json.loads((root / JHMDB_METADATA).read_text()):
        frame = int(Path(frame_path).stem)
        samples.append((f"v_{video}_f_{frame}", root / Path(masks_path).relative_to("jhmdb_sentences"), frame))
    return samples


def write_jhmdb(root: Path) -> None:
    """JHMDB-Sentences: Rename_Images PNGs, puppet_mask.mat, the MTTR metadata and COCO ground truth."""
    rng = np.random.default_rng(13)
    videos = {  # video -> (action, (H, W), frames, chosen frames (1-based), query)
        "girl_waving_wave_f_cm_np1_fr_med_0": ("wave", (36, 48), 6, [1, 5], "a girl waving her hand"),
        "man_running_run_f_nm_np1_ri_med_2": ("run", (40, 30), 5, [3], "Man  running on the street"),
        "boy_clapping_clap_u_nm_np1_fr_med_1": ("clap", (30, 40), 4, [2, 4], "a boy clapping"),
    }
    metadata = []
    for video, (action, (h, w), n, chosen, query) in videos.items():
        frames_dir = root / "Rename_Images" / action / video
        frames_dir.mkdir(parents=True)
        part_mask = np.zeros((h, w, n), np.uint8)
        for t in range(n):
            mask = ellipse(h, w, h / 2 + t, w / 2, h / 4, w / 5)
            part_mask[..., t] = mask
            Image.fromarray(paint(smooth_frame(rng, h, w), mask, OBJECT_COLOURS[2])).save(frames_dir / f"{t + 1:05d}.png")
        (root / "puppet_mask" / action / video).mkdir(parents=True)
        scipy.io.savemat(root / "puppet_mask" / action / video / "puppet_mask.mat", {"part_mask": part_mask})
        metadata += [[
            video,
            f"./jhmdb_sentences/Rename_Images/{action}/{video}/{frame:05d}.png",
            f"./jhmdb_sentences/puppet_mask/{action}/{video}/puppet_mask.mat",
            n,
            query,
        ] for frame in chosen]
    (root / "jhmdb_annotation.txt").write_text(
        "video_id,query\n" + "".join(f"{v},{spec[4]}\n" for v, spec in videos.items())
    )
    (root / JHMDB_METADATA).write_text(json.dumps(metadata))
    set_jhmdb_ground_truth(root, {})


def set_jhmdb_ground_truth(root: Path, masks: dict[str, np.ndarray]) -> None:
    """Replace the masks of samples (image id -> bool [H, W]) in puppet_mask.mat; rewrite the COCO ground truth."""
    ground_truth = []
    for image_id, path, frame in _jhmdb_samples(root):
        part_mask = scipy.io.loadmat(str(path))["part_mask"]
        if image_id in masks:
            part_mask[..., frame - 1] = masks[image_id]
            scipy.io.savemat(path, {"part_mask": part_mask})
        ground_truth.append((image_id, part_mask[..., frame - 1] != 0))
    (root / JHMDB_GROUND_TRUTH).write_text(json.dumps(_coco_ground_truth(ground_truth, with_bbox=False)))


def perturbed(mask: np.ndarray, variant: int) -> np.ndarray:
    """The mask itself, shifted right by two pixels, or eroded by one pixel (variant mod 3)."""
    if variant % 3 == 1:
        out = np.zeros_like(mask)
        out[:, 2:] = mask[:, :-2]
        return out
    if variant % 3 == 2:
        out = mask.copy()
        out[1:] &= mask[:-1]
        out[:-1] &= mask[1:]
        out[:, 1:] &= mask[:, :-1]
        out[:, :-1] &= mask[:, 1:]
        return out
    return mask.copy()


def ground_truth_from_predictions(predictions: list[dict[str, Any]], fallback: Callable[[str], np.ndarray]) -> dict:
    """Per sample, the top-scoring predicted mask (as evaluate_a2d picks it), perturbed by the sample's
    position; `fallback(image_id)` where that leaves nothing (the official loader needs an object)."""
    from pycocotools import mask as mask_utils

    by_id: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        by_id.setdefault(p["image_id"], []).append(p)
    masks = {}
    for position, (image_id, preds) in enumerate(by_id.items()):
        top = sorted(preds, key=lambda p: p["score"])[-1]["segmentation"]
        mask = perturbed(mask_utils.decode({"size": top["size"], "counts": top["counts"].encode()}) != 0, position)
        masks[image_id] = mask if mask.any() else fallback(image_id)
    return masks


def set_davis_ground_truth(davis: Path, predicted: Path) -> None:
    """Each object's mask from the predicted id map (perturbed per frame and object), or its drawn
    mask where the prediction holds none of it; objects painted in id order, so the first frame
    still holds every object and the number of objects stays the same."""
    val = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()
    for video in val:
        for path in sorted((davis / "Annotations_unsupervised" / "480p" / video).glob("*.png")):
            with Image.open(path) as img:
                drawn, palette = np.array(img), img.getpalette()
            with Image.open(predicted / video / path.name) as img:
                prediction = np.array(img)
            ids = np.zeros_like(drawn)
            for obj in range(1, int(drawn.max()) + 1):
                mask = perturbed(prediction == obj, int(path.stem) + obj)
                ids[mask if mask.any() else drawn == obj] = obj
            png = Image.fromarray(ids, mode="P")
            png.putpalette(palette)
            png.save(path)


def _coco_masks(path: Path) -> dict[str, np.ndarray]:
    """image id -> bool [H, W] mask of a COCO-format ground truth file."""
    from pycocotools import mask as mask_utils

    masks = {}
    for annotation in json.loads(path.read_text())["annotations"]:
        rle = annotation["segmentation"]
        masks[annotation["image_id"]] = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}) != 0
    return masks


def write_datasets(data: Path) -> None:
    if data.exists():
        shutil.rmtree(data)
    write_ytvos(data / "ref-youtube-vos")
    write_davis(data / "ref-davis")
    write_a2d(data / "a2d_sentences")
    write_jhmdb(data / "jhmdb_sentences")


# ---------------------------------------------------------------------------------------- patches
def _stub_module(name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module


def _unused(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("a stand-in for an optional module was called; install the real one")


def _install_missing_module_stubs() -> None:
    """matplotlib and imgaug: imported by the official scripts and Ref-COCO loaders, unused here."""
    try:
        importlib.import_module("matplotlib.pyplot")
    except ImportError:
        _stub_module("matplotlib")
        _stub_module("matplotlib.pyplot")
        _stub_module("matplotlib.collections", PatchCollection=_unused)
        _stub_module("matplotlib.patches", Polygon=_unused, Rectangle=_unused)
    try:
        importlib.import_module("imgaug")
    except ImportError:
        _stub_module("imgaug")
        _stub_module("imgaug.augmenters")
        _stub_module("imgaug.augmentables")
        _stub_module("imgaug.augmentables.segmaps", SegmentationMapsOnImage=_unused)
        _stub_module("imgaug.augmentables.bbs", BoundingBox=_unused, BoundingBoxesOnImage=_unused)


def read_video_pyav(filename: str, pts_unit: str = "sec", **_: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """torchvision.io.read_video of a whole file with the pyav backend: (uint8 [T, H, W, 3], audio, info)."""
    import av

    with av.open(filename) as container:
        stream = container.streams.video[0]
        frames = [frame.to_rgb().to_ndarray() for frame in container.decode(stream)]
        fps = float(stream.average_rate) if stream.average_rate else None
    return torch.from_numpy(np.stack(frames)), torch.empty(1, 0), {"video_fps": fps}


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    missing = object()
    original = getattr(obj, name, missing)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if original is missing:
            delattr(obj, name)
        else:
            setattr(obj, name, original)


@contextlib.contextmanager
def official_environment(official_root: Path, tokenizer_dir: Path) -> Iterator[dict[str, Any]]:
    """The official code importable with every runtime patch of the module docstring applied."""
    import torchvision.io

    _install_missing_module_stubs()
    undo_torchvision = model_fixture._torchvision_without_pretrained_kwarg()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_patched(torchvision.io, "read_video", read_video_pyav))
            stack.enter_context(_patched(torch.cuda, "set_device", lambda *a, **k: None))
            if not hasattr(np, "float"):
                stack.enter_context(_patched(np, "float", float))
            official = stack.enter_context(model_fixture._official_imports(official_root, tokenizer_dir))
            misc = importlib.import_module("util.misc")

            def targets_to(targets: list[dict[str, Any]], device: Any) -> list[dict[str, Any]]:
                # The variant commented out beside the official targets_to: image_id is a string.
                skip = ("caption", "dataset_name", "original_id", "image_id")
                return [{k: v.to(device) for k, v in t.items() if k not in skip} for t in targets]

            stack.enter_context(_patched(misc, "targets_to", targets_to))
            video_transforms = importlib.import_module("datasets.transforms_video")
            for name in ("datasets.a2d", "datasets.jhmdb"):
                loader = importlib.import_module(name)
                stack.enter_context(_patched(loader, "make_coco_transforms", _small_eval_transforms(
                    loader.make_coco_transforms, video_transforms)))
            yield official
    finally:
        undo_torchvision()


def _small_eval_transforms(make_transforms: Callable[..., Any], video_transforms: types.ModuleType) -> Callable:
    """The loader's transforms with the evaluation resize capped at MAX_SIZE instead of 640."""

    def make(image_set: str, max_size: int = 640) -> Any:
        transforms = make_transforms(image_set, max_size=max_size)
        if image_set == "val":
            transforms.transforms[0] = video_transforms.RandomResize([360], max_size=MAX_SIZE)
        return transforms

    return make


def _load_script(path: Path, name: str, optimize: int = 0) -> types.ModuleType:
    """Import an official script as a module (with `optimize=1`: without its assert statements)."""
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(path.read_text(), str(path), "exec", optimize=optimize), module.__dict__)
    return module


class _InlineProcess:
    """multiprocessing.Process that runs its target in this process when started."""

    def __init__(self, target: Callable[..., Any], args: tuple = ()) -> None:
        self.target, self.args = target, args

    def start(self) -> None:
        self.target(*self.args)

    def join(self) -> None:
        pass


class _InlineManager:
    def dict(self) -> dict:
        return {}


def _run_workers_inline(script: types.ModuleType) -> None:
    script.mp = types.SimpleNamespace(Process=_InlineProcess, Manager=_InlineManager)


def _official_parser(official: dict[str, Any]) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(parents=[official["get_args_parser"]()])


@contextlib.contextmanager
def _one_process_group() -> Iterator[None]:
    """A one-process gloo group, for the dist.barrier() at the end of evaluate_a2d."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- official runs
def make_checkpoint(official: dict[str, Any], path: Path) -> dict[str, Any]:
    """Seeded official weights (plus ADJUSTMENTS) saved as `{"model": state_dict}`; returns their description."""
    args = _official_parser(official).parse_args(YTVOS_FLAGS + ["--masks", "--device", "cpu"])
    model, _, _ = official["build"](args)
    aliases = model_fixture.seed_model(model, SEED)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for adjustment in ADJUSTMENTS:
        state[adjustment["key"]][adjustment["index"]] += adjustment["add"]
        for alias, owner in aliases.items():
            if owner == adjustment["key"]:
                state[alias] = state[owner]
    description = {
        "seed": SEED,
        "adjustments": ADJUSTMENTS,
        "state_dict_shapes": {k: list(v.shape) for k, v in state.items()},
        "state_dict_dtypes": {k: str(v.dtype) for k, v in state.items()},
        "shared_keys": aliases,
    }
    rebuilt = official_state_dict(description)
    different = [k for k in state if not torch.equal(state[k], rebuilt[k])]
    if different:
        raise RuntimeError(f"tests/seeded_weights.official_state_dict does not rebuild {different[:5]}")
    torch.save({"model": state}, path)
    return description


def run_ytvos(official: dict[str, Any], official_root: Path, checkpoint: Path, data: Path, work: Path) -> Path:
    import torchvision.transforms as T

    script = _load_script(official_root / "inference_ytvos.py", "inference_ytvos", optimize=1)
    script.transform.transforms[0] = T.Resize(SHORT_SIDE)
    _run_workers_inline(script)
    args = _official_parser(official).parse_args(YTVOS_FLAGS + [
        "--ytvos_path", str(data), "--output_dir", str(work), "--resume", str(checkpoint),
        "--device", "cpu", "--ngpu", "1",
    ])
    script.main(args)
    return work / "valid"


def convert_davis(official_root: Path, raw: Path, work: Path) -> Path:
    """tools/data/convert_davis_to_ytvos.py on a copy of the raw data (it moves the DAVIS folders)."""
    shutil.copytree(raw, work)
    convert = _load_script(official_root / "tools" / "data" / "convert_davis_to_ytvos.py", "convert_davis_to_ytvos")
    convert.mv_images_to_folder(str(work), str(work))
    convert.create_meta_expressions(str(work), str(work))
    convert.create_meta_annotaions(str(work), str(work))
    return work


def run_davis(official: dict[str, Any], official_root: Path, checkpoint: Path, converted: Path, work: Path) -> Path:
    import torchvision.transforms as T

    script = _load_script(official_root / "inference_davis.py", "inference_davis")
    script.transform.transforms[0] = T.Resize(SHORT_SIDE)
    _run_workers_inline(script)
    args = _official_parser(official).parse_args(YTVOS_FLAGS + [
        "--davis_path", str(converted), "--output_dir", str(work), "--resume", str(checkpoint),
        "--device", "cpu", "--ngpu", "1",
    ])
    script.main(args)
    return work / "valid"


def evaluate_davis(official_root: Path, davis_root: Path, results: Path) -> dict[str, Any]:
    """eval_davis.py on one annotator's folder; its CSV texts and its unrounded global numbers."""
    argv = sys.argv
    sys.argv = ["eval_davis.py", "--davis_path", str(davis_root), "--results_path", str(results)]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            namespace = runpy.run_path(str(official_root / "eval_davis.py"), run_name="__main__")
    finally:
        sys.argv = argv
    g_measures = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    return {
        "global": dict(zip(g_measures, (float(v) for v in namespace["g_res"][0]), strict=True)),
        "global_csv": (results / "global_results-val.csv").read_text(),
        "per_sequence_csv": (results / "per-sequence_results-val.csv").read_text(),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, (np.ndarray, np.floating, np.integer)):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def run_a2d_eval(
    official: dict[str, Any], dataset_file: str, root: Path, checkpoint: Path, batch_size: int, num_gpus: int
) -> dict[str, Any]:
    """main.py --eval on one GPU, or its distributed branch emulated rank by rank; predictions and metrics."""
    misc = importlib.import_module("util.misc")
    path_flag = "--a2d_path" if dataset_file == "a2d" else "--jhmdb_path"
    args = _official_parser(official).parse_args(A2D_FLAGS + [
        "--dataset_file", dataset_file, path_flag, str(root), "--resume", str(checkpoint),
        "--batch_size", str(batch_size), "--max_size", str(MAX_SIZE), "--device", "cpu", "--num_workers", "0",
    ])
    ranks: list[list[dict[str, Any]]] = []

    def all_gather(predictions: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        # Every rank's predictions so far, in rank order: all of them once the last rank calls it.
        ranks.append(predictions)
        return list(ranks)

    with _one_process_group(), _patched(misc, "all_gather", all_gather):
        if num_gpus == 1:
            main_module = importlib.import_module("main")
            original_evaluate = main_module.evaluate_a2d
            metrics: dict[str, Any] = {}

            def evaluate_a2d(*a: Any, **k: Any) -> dict[str, Any]:
                metrics.update(original_evaluate(*a, **k))
                return metrics

            with _patched(main_module, "evaluate_a2d", evaluate_a2d):
                main_module.main(args)
        else:
            metrics = _emulated_distributed_eval(args, num_gpus)
    if len(ranks) != num_gpus:
        raise RuntimeError(f"expected {num_gpus} gathers, got {len(ranks)}")
    predictions = [_plain(p) for rank in ranks for p in rank]
    return {"batch_size": batch_size, "num_gpus": num_gpus, "predictions": predictions, "metrics": _plain(metrics)}


def _emulated_distributed_eval(args: argparse.Namespace, num_gpus: int) -> dict[str, Any]:
    """main.py's eval branch with `args.distributed`, one rank after the other in this process."""
    from torch.utils.data import DataLoader

    misc = importlib.import_module("util.misc")
    samplers = importlib.import_module("datasets.samplers")
    engine = importlib.import_module("engine")
    args.masks = True
    model, _, postprocessor = importlib.import_module("models").build_model(args)
    model.load_state_dict(torch.load(args.resume, map_location="cpu")["model"], strict=False)
    dataset_val = importlib.import_module("datasets").build_dataset(args.dataset_file, image_set="val", args=args)
    metrics: dict[str, Any] = {}
    for rank in range(num_gpus):
        sampler = samplers.DistributedSampler(dataset_val, num_replicas=num_gpus, rank=rank, shuffle=False)
        loader = DataLoader(dataset_val, args.batch_size, sampler=sampler, drop_last=False,
                            collate_fn=misc.collate_fn, num_workers=args.num_workers)
        last = rank == num_gpus - 1
        with _patched(misc, "is_main_process", lambda last=last: last):
            metrics = engine.evaluate_a2d(model, loader, postprocessor, torch.device(args.device), args)
    return metrics


def official_sampler_batches(official: dict[str, Any], num_samples: int, batch_size: int, num_gpus: int) -> list:
    """The batches main.py's validation loader yields over all GPUs, in all_gather order."""
    from torch.utils.data import DataLoader, SequentialSampler

    samplers = importlib.import_module("datasets.samplers")
    dataset = list(range(num_samples))
    if num_gpus == 1:
        ranks = [SequentialSampler(dataset)]
    else:
        ranks = [samplers.DistributedSampler(dataset, num_replicas=num_gpus, rank=r, shuffle=False)
                 for r in range(num_gpus)]
    return [batch for sampler in ranks
            for batch in DataLoader(dataset, batch_size, sampler=sampler, drop_last=False, collate_fn=list)]


# ---------------------------------------------------------------------------------------- driver
DAVIS_CONVERTED_FILES = [
    "meta_expressions/train/meta_expressions.json",
    "meta_expressions/valid/meta_expressions.json",
    "train/meta.json",
    "valid/meta.json",
]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"{name}: {timings[name]} s", flush=True)
    return result


def run(official_root: Path, output: Path, tokenizer_dir: Path) -> None:
    """Write the datasets, run the official scripts on them and store their outputs under `output`."""
    import transformers

    if not (official_root / "inference_ytvos.py").is_file():
        raise FileNotFoundError(f"{official_root} is not a checkout of LANMNG/BIFIT (no inference_ytvos.py)")
    commit = subprocess.run(
        ["git", "-C", str(official_root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    data = output / "data"
    write_datasets(data)
    official_out = output / "official"
    if official_out.exists():
        shutil.rmtree(official_out)
    timings: dict[str, float] = {}
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory(prefix="bifit-protocol-") as tmp, \
            official_environment(official_root, tokenizer_dir) as official:
        work = Path(tmp)
        checkpoint = work / "seeded_official.pth"
        description = make_checkpoint(official, checkpoint)

        valid = _timed(timings, "ytvos", lambda: run_ytvos(
            official, official_root, checkpoint, data / "ref-youtube-vos", work / "ytvos"))
        shutil.copytree(valid, official_out / "ytvos" / "valid")

        converted = convert_davis(official_root, data / "ref-davis", work / "ref-davis")
        for relative in DAVIS_CONVERTED_FILES:
            target = official_out / "davis" / "converted" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(converted / relative, target)
        valid = _timed(timings, "davis", lambda: run_davis(
            official, official_root, checkpoint, converted, work / "davis"))
        set_davis_ground_truth(data / "ref-davis" / "DAVIS", valid / "anno_0")
        metrics = {f"anno_{k}": evaluate_davis(official_root, data / "ref-davis" / "DAVIS", valid / f"anno_{k}")
                   for k in range(4)}
        shutil.copytree(valid, official_out / "davis" / "valid", ignore=shutil.ignore_patterns("*.csv"))
        _write_json(official_out / "davis" / "metrics.json", metrics)

        root = data / "a2d_sentences"
        first = _timed(timings, "a2d ground truth", lambda: run_a2d_eval(official, "a2d", root, checkpoint, 1, 1))
        drawn = _coco_masks(root / A2D_GROUND_TRUTH)
        set_a2d_ground_truth(root, ground_truth_from_predictions(first["predictions"], drawn.__getitem__))
        a2d = {name: _timed(timings, f"a2d {name}", lambda b=b, g=g: run_a2d_eval(
            official, "a2d", root, checkpoint, b, g)) for name, b, g in A2D_RUNS}
        _write_json(official_out / "a2d.json", a2d)

        root = (data / "jhmdb_sentences").resolve()
        cwd = work / "jhmdb_cwd"
        (cwd / "data").mkdir(parents=True)
        (cwd / "data" / "jhmdb_sentences").symlink_to(root, target_is_directory=True)
        with contextlib.chdir(cwd):
            first = _timed(timings, "jhmdb ground truth", lambda: run_a2d_eval(
                official, "jhmdb", root, checkpoint, 1, 1))
            drawn = _coco_masks(root / JHMDB_GROUND_TRUTH)
            set_jhmdb_ground_truth(root, ground_truth_from_predictions(first["predictions"], drawn.__getitem__))
            jhmdb = {name: _timed(timings, f"jhmdb {name}", lambda b=b, g=g: run_a2d_eval(
                official, "jhmdb", root, checkpoint, b, g)) for name, b, g in JHMDB_RUNS}
        _write_json(official_out / "jhmdb.json", jhmdb)

        sampler_batches = [
            {"num_samples": n, "batch_size": b, "num_gpus": g, "batches": official_sampler_batches(official, n, b, g)}
            for n, b, g in SAMPLER_CASES
        ]
        _write_json(official_out / "sampler_batches.json", sampler_batches)

    manifest = {
        "official_commit": commit,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "short_side": SHORT_SIDE,
        "max_size": MAX_SIZE,
        "ytvos_davis_flags": YTVOS_FLAGS,
        "a2d_jhmdb_flags": A2D_FLAGS,
        "a2d_runs": {name: {"batch_size": b, "num_gpus": g} for name, b, g in A2D_RUNS},
        "jhmdb_runs": {name: {"batch_size": b, "num_gpus": g} for name, b, g in JHMDB_RUNS},
        "checkpoint": description,
        "seconds": timings,
    }
    _write_json(output / "manifest.json", manifest)
    (output / "README.md").write_text(_fixture_readme(commit, transformers.__version__))


def _fixture_readme(commit: str, transformers_version: str) -> str:
    return f"""# Official inference and evaluation protocols on tiny datasets

Written by `scripts/make_protocol_fixtures.py` (read its docstring for every runtime patch the
official code needed) from LANMNG/BIFIT at `{commit}`, on CPU, transformers {transformers_version},
weights `tests/seeded_weights.official_state_dict(manifest["checkpoint"])` (seed {SEED}, released
configuration, one adjusted bias).

- `data/`: the inputs, in the official layouts (`ref-youtube-vos`, `ref-davis` as unzipped,
  `a2d_sentences`, `jhmdb_sentences`).
- `official/ytvos/valid/<video>/<exp_id>/<frame>.png`: `inference_ytvos.py` (shorter side {SHORT_SIDE}).
- `official/davis/converted/`: what `tools/data/convert_davis_to_ytvos.py` wrote;
  `official/davis/valid/anno_<k>/<video>/<frame>.png`: `inference_davis.py` (shorter side {SHORT_SIDE});
  `official/davis/metrics.json`: `eval_davis.py` on each annotator (its CSVs and unrounded numbers).
- `official/a2d.json`, `official/jhmdb.json`: `main.py --eval --max_size {MAX_SIZE}` per run (batch
  size per GPU, GPUs): the gathered predictions (COCO results, RLE) and the metrics of `evaluate_a2d`.
- `official/sampler_batches.json`: the batches of `main.py`'s validation loader for a few dataset sizes,
  batch sizes and GPU counts, in `all_gather` order.
- `manifest.json`: the settings and the seeded checkpoint's key names, shapes and adjustments.

Rebuild (transformers 4.x and scikit-image on PYTHONPATH, see the script)::

    PYTHONPATH=/tmp/tf4 python scripts/make_protocol_fixtures.py --official-root /path/to/BIFIT
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-root", type=Path, required=True, help="checkout of LANMNG/BIFIT")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="fixture directory to (re)write")
    parser.add_argument("--tokenizer-dir", type=Path, default=model_fixture.DEFAULT_TOKENIZER_DIR,
                        help="tiny RoBERTa directory standing in for roberta-base")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # One thread: on a shared machine more threads than free cores slow torch down many times.
    torch.set_num_threads(1)
    run(args.official_root.resolve(), args.output.resolve(), args.tokenizer_dir.resolve())
    size = sum(p.stat().st_size for p in args.output.rglob("*") if p.is_file())
    print(f"wrote {args.output} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
