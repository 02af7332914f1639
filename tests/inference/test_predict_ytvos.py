"""`bifit predict ytvos` end to end on a tiny Ref-YouTube-VOS, and the held-out J&F evaluation."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from predict_fixtures import (  # noqa: F401
    SHORT_SIDE,
    H,
    W,
    fake_rank,
    save_checkpoint,
    write_ytvos,
)

import bifit
from bifit.cli import build_parser, main
from bifit.data.ytvos import (
    ytvos_heldout_split,
    ytvos_heldout_videos,
    ytvos_valid_videos,
)
from bifit.inference.core import load_frames, segment_clip, select_queries
from bifit.inference.ytvos_predict import (
    evaluate_ytvos_results,
    predict_ytvos,
    write_submission_zip,
)
from bifit.outputs import OutputError


@pytest.fixture(scope="module")
def checkpoint(module_tmp, tiny_bert) -> Path:
    return save_checkpoint(module_tmp / "tiny", tiny_bert)


@pytest.fixture(scope="module")
def model(checkpoint):
    return bifit.load_pretrained(checkpoint)


@pytest.fixture(scope="module")
def ytvos_root(tmp_path_factory) -> Path:
    return write_ytvos(tmp_path_factory.mktemp("ytvos"))


def predict_args(root: Path, checkpoint: Path, output: Path, *extra: str) -> list[str]:
    return [
        "predict", "ytvos", "--data-root", str(root), "--checkpoint", str(checkpoint), "--output", str(output),
        "--short-side", str(SHORT_SIDE), "--no-progress", *extra,
    ]


@pytest.fixture(scope="module")
def valid_run(ytvos_root, checkpoint, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("valid_out")
    assert main(predict_args(ytvos_root, checkpoint, output)) == 0
    return output


def official_masks(model, root: Path, video: str, caption: str, frames: list[str]) -> np.ndarray:
    """The official inference_ytvos.py steps, one expression at a time: bool [T, H, W]."""
    paths = [root / "valid" / "JPEGImages" / video / f"{f}.jpg" for f in frames]
    clip, (height, width) = load_frames(paths, SHORT_SIDE)
    with torch.no_grad():
        out = model([clip], [caption])
    scores = out["pred_logits"][0].sigmoid().mean(0).max(-1).values  # [Q]
    query = int(scores.argmax())
    masks = out["pred_masks"][0][:, query][None]  # [1, T, h, w]
    masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
    return (masks.sigmoid() > 0.5)[0].numpy()


def test_valid_split_official_layout_png_format_and_values(valid_run, ytvos_root, model):
    split = valid_run / "valid"
    assert sorted(p.name for p in split.iterdir()) == ["v_one", "v_two"]  # t1 is a test video
    meta = json.loads((ytvos_root / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    for video in ("v_one", "v_two"):
        assert sorted(p.name for p in (split / video).iterdir()) == sorted(meta[video]["expressions"])
        for exp_id, exp in meta[video]["expressions"].items():
            names = sorted(p.stem for p in (split / video / exp_id).glob("*.png"))
            assert names == meta[video]["frames"]
            pngs = []
            for name in names:
                with Image.open(split / video / exp_id / f"{name}.png") as img:
                    assert img.mode == "L" and img.size == (W, H)
                    pngs.append(np.array(img))
            pngs = np.stack(pngs)
            assert set(np.unique(pngs)) <= {0, 255}
            expected = official_masks(model, ytvos_root, video, exp["exp"], meta[video]["frames"])
            np.testing.assert_array_equal(pngs == 255, expected)


def test_submission_zip_holds_exactly_the_annotations_layout(valid_run):
    with zipfile.ZipFile(valid_run / "submission.zip") as archive:
        names = sorted(archive.namelist())
        split = valid_run / "valid"
        expected = sorted("Annotations/" + p.relative_to(split).as_posix() for p in split.rglob("*.png"))
        assert names == expected and len(names) == 3 * 3 + 2
        first = names[0]
        assert archive.read(first) == (split / first.removeprefix("Annotations/")).read_bytes()


def test_one_backbone_pass_for_all_expressions_equals_one_at_a_time(model, ytvos_root):
    video = next(v for v in ytvos_valid_videos(ytvos_root) if v.video == "v_one")
    frames, _ = load_frames(video.frame_paths, SHORT_SIDE)
    captions = [e.text for e in video.expressions]
    shared = segment_clip(model, frames, captions)
    chunked = segment_clip(model, frames, captions, expressions_per_pass=2)
    for e, caption in enumerate(captions):
        alone = segment_clip(model, frames, [caption])
        torch.testing.assert_close(shared.logits[e], alone.logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shared.mask_logits[e], alone.mask_logits[0], atol=1e-4, rtol=1e-5)
        assert shared.queries[e] == alone.queries[0]
    torch.testing.assert_close(chunked.mask_logits, shared.mask_logits, atol=1e-4, rtol=1e-5)
    assert torch.equal(shared.queries, select_queries(shared.logits))


def test_clip_length_cuts_the_video_and_chooses_the_query_per_clip(model, ytvos_root, tmp_path):
    video = next(v for v in ytvos_valid_videos(ytvos_root) if v.video == "v_one")
    assert predict_ytvos(model, [video], tmp_path, short_side=SHORT_SIDE, clip_length=2, progress=False) == 9
    caption, frames = video.expressions[1].text, list(video.frame_names)
    for clip in (frames[:2], frames[2:]):
        expected = official_masks(model, ytvos_root, "v_one", caption, clip)
        written = [np.array(Image.open(tmp_path / "v_one" / "1" / f"{f}.png")) == 255 for f in clip]
        np.testing.assert_array_equal(np.stack(written), expected)


def test_two_ranks_share_the_videos_and_rank0_zips_all(ytvos_root, checkpoint, tmp_path, monkeypatch, valid_run):
    barriers: list[int] = []
    fake_rank(monkeypatch, 1, 2, barriers)
    assert main(predict_args(ytvos_root, checkpoint, tmp_path)) == 0
    assert sorted(p.name for p in (tmp_path / "valid").iterdir()) == ["v_two"]  # sorted videos [v_one, v_two][1::2]
    assert not (tmp_path / "submission.zip").exists()
    fake_rank(monkeypatch, 0, 2, barriers)
    assert main(predict_args(ytvos_root, checkpoint, tmp_path)) == 0
    assert barriers == [1, 0]
    with zipfile.ZipFile(tmp_path / "submission.zip") as mine, zipfile.ZipFile(valid_run / "submission.zip") as ref:
        assert sorted(mine.namelist()) == sorted(ref.namelist())
        assert all(mine.read(n) == ref.read(n) for n in ref.namelist())


def test_zip_refuses_incomplete_predictions(valid_run, ytvos_root, tmp_path):
    split = tmp_path / "valid"
    shutil.copytree(valid_run / "valid", split)
    (split / "v_two" / "0" / "00005.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 prediction PNG"):
        write_submission_zip(split, ytvos_valid_videos(ytvos_root), tmp_path / "submission.zip")


def test_heldout_split_is_predicted_and_scored(ytvos_root, checkpoint, tmp_path, capsys):
    assert ytvos_heldout_split(ytvos_root, 2)[1] == ["tr_a", "tr_c"]
    assert main(predict_args(ytvos_root, checkpoint, tmp_path, "--split", "heldout", "--heldout-every", "2")) == 0
    assert sorted(p.name for p in (tmp_path / "heldout").iterdir()) == ["tr_a", "tr_c"]
    assert not (tmp_path / "submission.zip").exists()
    results = json.loads((tmp_path / "heldout_results.json").read_text())
    g = results["global"]
    assert g["num_expressions"] == 4 and 0 <= g["J"] <= 1 and 0 <= g["F"] <= 1
    assert g["J&F"] == pytest.approx((g["J"] + g["F"]) / 2)
    assert g["J"] == pytest.approx(np.mean([r["J"] for r in results["per_expression"]]))
    csv_lines = (tmp_path / "heldout_per-expression.csv").read_text().splitlines()
    assert csv_lines[0] == "Video,Expression,J,F" and len(csv_lines) == 5
    assert "J&F" in capsys.readouterr().out


def test_heldout_scores_of_perfect_and_empty_predictions(ytvos_root, tmp_path):
    videos = ytvos_heldout_videos(ytvos_root, 2)
    for kind in ("perfect", "empty"):
        for video in videos:
            for e in video.expressions:
                folder = tmp_path / kind / video.video / e.exp_id
                folder.mkdir(parents=True)
                for name, gt_path in zip(video.frame_names, video.mask_paths, strict=True):
                    gt = np.array(Image.open(gt_path)) == e.obj_id
                    Image.fromarray((gt if kind == "perfect" else np.zeros_like(gt)).astype(np.uint8) * 255).save(
                        folder / f"{name}.png"
                    )
    perfect = evaluate_ytvos_results(videos, tmp_path / "perfect", progress=False)["global"]
    assert perfect == {"J&F": 1.0, "J": 1.0, "F": 1.0, "num_expressions": 4}
    # tr_a: object 1 in 4/4 frames, object 2 in 2/4; tr_c: object 1 in frames 1-2 of 3 (twice).
    # An empty prediction scores 0 where the object is visible and 1 where it is absent.
    empty = evaluate_ytvos_results(videos, tmp_path / "empty", progress=False)["global"]
    expected = np.mean([0.0, 2 / 4, 1 / 3, 1 / 3])
    assert empty["J"] == pytest.approx(expected) and empty["F"] == pytest.approx(expected)
    assert main(["evaluate", "ytvos", "--data-root", str(ytvos_root), "--results", str(tmp_path / "perfect"),
                 "--heldout-every", "2"]) == 0
    assert json.loads((tmp_path / "heldout_results.json").read_text())["global"]["J&F"] == 1.0


def test_bad_inputs_give_one_line_errors(ytvos_root, checkpoint, tmp_path, capsys):
    assert main(predict_args(tmp_path / "nowhere", checkpoint, tmp_path / "o")) == 2
    assert "Ref-YouTube-VOS root not found" in capsys.readouterr().err
    assert main(predict_args(ytvos_root, checkpoint, tmp_path / "o", "--clip-length", "0")) == 2
    assert "--clip-length must be >= 1" in capsys.readouterr().err
    assert main(predict_args(ytvos_root, tmp_path / "missing.pth", tmp_path / "o")) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    # Frames of 46 x 30 become 61 x 40 at the test's shorter side: over a limit of 60.
    assert main(predict_args(ytvos_root, checkpoint, tmp_path / "o", "--max-long-side", "60")) == 2
    err = capsys.readouterr().err.strip()
    assert "00000.jpg: a 46x30 frame resized to 61x40" in err and "over the limit of 60 px" in err
    assert len(err.splitlines()) == 1


def test_an_unwritable_output_is_one_error_naming_it(ytvos_root, checkpoint, tmp_path):
    (tmp_path / "a_file").write_text("in the way")
    args = build_parser().parse_args(predict_args(ytvos_root, checkpoint, tmp_path / "a_file" / "out"))
    with pytest.raises(OutputError, match=r"cannot create the folder .*a_file/out/valid: Not a directory"):
        args.func(args)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_full_disk_while_zipping_names_the_zip_and_leaves_no_partial_file(valid_run, ytvos_root, tmp_path):
    videos = ytvos_valid_videos(ytvos_root)
    (tmp_path / ".submission.zip.partial").symlink_to("/dev/full")  # the zip is written beside, then renamed
    with pytest.raises(OutputError, match=r"cannot write .*submission.zip: No space left on device"):
        write_submission_zip(valid_run / "valid", videos, tmp_path / "submission.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [(71, 45), (39, 67), (640, 360)])
def test_load_frames_equals_the_official_script_transform_bit_for_bit(tmp_path, size):
    """inference_ytvos.py / inference_davis.py: PIL RGB frames through Resize(360), ToTensor, Normalize."""
    import torchvision.transforms as TV

    rng = np.random.default_rng(size[0])
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i:05d}.jpg")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    transform = TV.Compose([TV.Resize(360), TV.ToTensor(), TV.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    expected = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    clip, original = load_frames(paths)
    assert original == (size[1], size[0])
    assert torch.equal(clip, expected)
