"""Ids read from dataset metadata are untrusted: an id such as ``../../x`` is refused with one clear
error naming the entry, before anything is read or written outside the dataset or output folder."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from predict_fixtures import SHORT_SIDE, save_checkpoint, write_a2d, write_davis, write_jhmdb, write_ytvos

from bifit.cli import main
from bifit.data.a2d import A2DSentencesDataset, build_a2d_samples, load_a2d_samples
from bifit.data.davis import davis_eval_videos, prepare_davis
from bifit.data.jhmdb import load_jhmdb_samples
from bifit.data.names import UnsafeNameError, inside, safe_name
from bifit.data.video import VideoFrameCache
from bifit.data.ytvos import EvalVideo, Expression, RefVOSDataset, ytvos_valid_videos
from bifit.inference.ytvos_predict import write_submission_zip


@pytest.fixture(scope="module")
def checkpoint(module_tmp, tiny_bert) -> Path:
    return save_checkpoint(module_tmp / "tiny", tiny_bert)


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/../..", "a/b", "a\\b", "/etc", "C:\\x", "a\0b"])
def test_safe_name_refuses_anything_but_a_plain_name(name):
    with pytest.raises(UnsafeNameError, match="^meta.json: video id ") as info:
        safe_name(name, "video id", "meta.json")
    assert repr(name) in str(info.value) and len(str(info.value).splitlines()) == 1


def test_safe_name_keeps_real_dataset_names():
    for name in ["v_one", "00005", "-0Bu9OOG3Hk", "#122_Cleaning_Up_The_Beach", "..a", "bike-packing", "a b"]:
        assert safe_name(name, "id") == name
    with pytest.raises(UnsafeNameError, match="must be a string"):
        safe_name(3, "id")


def test_inside_refuses_a_link_out_of_the_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "video").symlink_to(tmp_path / "elsewhere")
    assert inside(tmp_path / "out", tmp_path / "out" / "a" / "b.png") == tmp_path / "out" / "a" / "b.png"
    with pytest.raises(UnsafeNameError, match="outside the output folder"):
        inside(tmp_path / "out", tmp_path / "out" / "video" / "0.png")


def _ytvos_with_hostile_ids(world: Path, video_id: str | None, exp_id: str | None) -> Path:
    """The tiny Ref-YouTube-VOS with video v_one renamed to `video_id` and / or its expression 0 to
    `exp_id`; the frames are placed where the hostile video id points, so that a reader trusting it
    would find them and write its predictions outside the output folder."""
    root = write_ytvos(world / "ytvos")
    path = root / "meta_expressions" / "valid" / "meta_expressions.json"
    videos = json.loads(path.read_text())["videos"]
    entry = videos.pop("v_one")
    if exp_id is not None:
        entry["expressions"][exp_id] = entry["expressions"].pop("0")
    if video_id is not None:
        target = root / "valid" / "JPEGImages" / video_id
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(root / "valid" / "JPEGImages" / "v_one", target)
    videos[video_id or "v_one"] = entry
    path.write_text(json.dumps({"videos": videos}))
    return root


@pytest.mark.parametrize(
    ("video_id", "exp_id", "entry"),
    [("../../x", None, "video id '../../x'"), (None, "../../../x", "expression id of video v_one '../../../x'")],
)
def test_ytvos_prediction_refuses_hostile_ids_and_writes_nothing_outside(
    tmp_path, checkpoint, capsys, video_id, exp_id, entry
):
    world = tmp_path / "world"
    root = _ytvos_with_hostile_ids(world, video_id, exp_id)
    before = files_under(world)
    output = world / "out"
    code = main(["predict", "ytvos", "--data-root", str(root), "--checkpoint", str(checkpoint), "--output",
                 str(output), "--short-side", str(SHORT_SIDE), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert entry in err and "meta_expressions.json" in err and "not a plain name" in err
    assert len(err.splitlines()) == 1
    assert {p for p in files_under(world) - before if p.parts[0] != "out"} == set()
    assert not list(output.rglob("*.png")) and not (output / "submission.zip").exists()


def test_ytvos_hostile_frame_name_is_refused(tmp_path):
    root = write_ytvos(tmp_path / "ytvos")
    path = root / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(path.read_text())
    meta["videos"]["v_two"]["frames"][0] = "../../../x"
    path.write_text(json.dumps(meta))
    with pytest.raises(UnsafeNameError, match=r"meta_expressions.json: frame name of video v_two '../../../x'"):
        ytvos_valid_videos(root)


def test_ytvos_expressions_that_are_not_utf8_are_refused_when_read(tmp_path, checkpoint, capsys):
    root = write_ytvos(tmp_path / "ytvos")
    path = root / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(path.read_text())
    meta["videos"]["v_two"]["expressions"]["0"]["exp"] = "a woman holding an umbrella \udcff"
    path.write_text(json.dumps(meta))  # a JSON escape of a lone surrogate is valid JSON
    code = main(["predict", "ytvos", "--data-root", str(root), "--checkpoint", str(checkpoint), "--output",
                 str(tmp_path / "out"), "--short-side", str(SHORT_SIDE), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "meta_expressions.json: expression 0 of video v_two is not valid UTF-8 text (byte 0xff at position 28)" in err
    assert not (tmp_path / "out").exists()
    path.write_bytes(b'{"videos": {"v": {"expressions": {"0": {"exp": "caf\xe9"}}, "frames": []}}}')
    with pytest.raises(ValueError, match=r"meta_expressions.json is not valid UTF-8 text"):
        ytvos_valid_videos(root)


def test_ytvos_training_set_refuses_hostile_ids(tmp_path):
    root = write_ytvos(tmp_path / "ytvos")
    path = root / "meta_expressions" / "train" / "meta_expressions.json"
    meta = json.loads(path.read_text())
    meta["videos"]["tr_b"]["frames"][1] = "../../secret"
    path.write_text(json.dumps(meta))
    with pytest.raises(UnsafeNameError, match="frame name of video tr_b"):
        RefVOSDataset(root / "train", path)


def test_submission_zip_never_holds_entries_outside_annotations(tmp_path):
    split = tmp_path / "out" / "valid"
    (split / "v").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"not yours")
    os.symlink(tmp_path / "secret.png", split / "v" / "0.png")
    linked = [EvalVideo("v", ("0",), (Path("x"),), (Expression("e", "a dog", None),), None)]
    (split / "v" / "e").mkdir()
    os.symlink(tmp_path / "secret.png", split / "v" / "e" / "0.png")
    with pytest.raises(UnsafeNameError, match="outside the output folder"):
        write_submission_zip(split, linked, tmp_path / "out" / "submission.zip")
    with pytest.raises(UnsafeNameError, match="expression id of video v '../../..'"):
        EvalVideo("v", ("0",), (Path("x"),), (Expression("../../..", "a dog", None),), None)
    assert not (tmp_path / "out" / "submission.zip").exists()
    (split / "v" / "e" / "0.png").unlink()
    (split / "v" / "e" / "0.png").write_bytes(b"png")
    zip_path = write_submission_zip(split, linked, tmp_path / "out" / "submission.zip")
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["Annotations/v/e/0.png"]


def test_davis_preparation_refuses_a_hostile_sequence_name(tmp_path):
    davis, text = write_davis(tmp_path / "world")
    (tmp_path / "x").mkdir()  # where the hostile name points: a converter trusting it would link it
    (davis / "ImageSets" / "2017" / "val.txt").write_text("dogs\n../../../x\n")
    before = files_under(tmp_path)
    with pytest.raises(UnsafeNameError, match=r"val.txt: sequence name '../../../x' is not a plain name"):
        prepare_davis(davis, text, tmp_path / "world" / "ref-davis")
    assert {p for p in files_under(tmp_path) - before if p.parts[:2] != ("world", "ref-davis")} == set()


def test_davis_prediction_refuses_a_hostile_video_id(tmp_path, checkpoint, capsys):
    davis, text = write_davis(tmp_path / "world")
    ref = prepare_davis(davis, text, tmp_path / "world" / "ref-davis")
    path = ref / "meta_expressions" / "valid" / "meta_expressions.json"
    meta = json.loads(path.read_text())
    meta["videos"]["../../../x"] = meta["videos"].pop("cows")
    path.write_text(json.dumps(meta))
    shutil.copytree(ref / "valid" / "JPEGImages" / "cows", tmp_path / "x")
    with pytest.raises(UnsafeNameError, match="video id '../../../x'"):
        davis_eval_videos(ref)
    before = files_under(tmp_path)
    code = main(["predict", "davis", "--data-root", str(ref), "--davis-root", str(davis), "--checkpoint",
                 str(checkpoint), "--output", str(tmp_path / "world" / "out"), "--short-side", str(SHORT_SIDE),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "video id '../../../x'" in err and len(err.splitlines()) == 1
    assert {p for p in files_under(tmp_path) - before if p.parts[:2] != ("world", "out")} == set()


def test_a2d_readers_refuse_hostile_video_ids(tmp_path):
    root = write_a2d(tmp_path / "a2d")
    samples = root / "a2d_sentences_single_frame_test_annotations.json"
    samples.write_text(json.dumps([["a dog", "../../x", 2, 1]]))
    shutil.copy(root / "Release" / "clips320H" / "teA.mp4", root / "x.mp4")
    with pytest.raises(UnsafeNameError, match=r"test_annotations.json: video id '../../x'"):
        load_a2d_samples(root, "test")
    with pytest.raises(UnsafeNameError):
        A2DSentencesDataset(root, "test", cache_dir=tmp_path / "cache")
    assert not list(tmp_path.rglob("*.npy"))
    samples.unlink()
    videoset = root / "Release" / "videoset.csv"
    videoset.write_text(videoset.read_text().replace("teB,", "../../teB,"))
    with pytest.raises(UnsafeNameError, match=r"videoset.csv: video id '../../teB'"):
        build_a2d_samples(root, "test")


def test_frame_cache_refuses_a_key_that_leaves_its_folder(tmp_path):
    cache = VideoFrameCache(tmp_path / "cache", decode=lambda p: np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(UnsafeNameError, match="frame cache key '../x'"):
        cache.get("../x", tmp_path / "v.mp4")
    assert not list(tmp_path.rglob("*.npy"))


def test_jhmdb_metadata_paths_may_not_leave_the_dataset(tmp_path):
    root = write_jhmdb(tmp_path / "jhmdb")
    path = root / "jhmdb_sentences_samples_metadata.json"
    entries = json.loads(path.read_text())
    entries[1][1] = "/data/jhmdb/Rename_Images/wave/../../../../secret/00001.png"
    path.write_text(json.dumps(entries))
    with pytest.raises(UnsafeNameError, match=r"metadata.json: component of the path .*secret.* '..' is not"):
        load_jhmdb_samples(root)
