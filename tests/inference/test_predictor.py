"""The Segmenter: official inference rules, one pass over the pixels for several expressions,
long videos in clips with one query for the whole video, inputs of every kind, bad input."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import bifit
from bifit.data.frame_sizes import FrameSizeError
from bifit.data.video import read_frames
from bifit.assets import default_checkpoint
from bifit.inference.predictor import Segmenter, check_expressions
from bifit.inference.visualize import write_mp4
from bifit.modeling.text_encoder import ExpressionError

SHORT = 32  # small frames keep the tiny model fast; the official size (360) is the default


@pytest.fixture(scope="module")
def model(tiny_bert):
    torch.manual_seed(0)
    return bifit.build_model("tiny", text_encoder=str(tiny_bert)).eval()


@pytest.fixture(scope="module")
def video():
    return np.random.default_rng(0).integers(0, 256, (5, 30, 44, 3), dtype=np.uint8)


def _official(model, frames: np.ndarray, expression: str, short: int):
    """The official Ref-YTVOS inference written out for one expression, on torchvision transforms."""
    import torchvision.transforms as T

    transform = T.Compose([T.Resize(short), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    imgs = torch.stack([transform(Image.fromarray(f)) for f in frames])
    with torch.no_grad():
        out = model([imgs], [expression])
    logits, boxes, masks = out["pred_logits"][0], out["pred_boxes"][0], out["pred_masks"][0]
    q = int(logits.sigmoid().mean(0).max(-1).values.argmax())
    h, w = frames.shape[1:3]
    up = F.interpolate(masks[:, q][None], size=(h, w), mode="bilinear", align_corners=False)[0]
    cx, cy, bw, bh = boxes[:, q].unbind(-1)
    xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * torch.tensor([w, h, w, h])
    return q, (up.sigmoid() > 0.5).numpy(), logits[:, q, 0].sigmoid().numpy(), xyxy.numpy()


def test_segment_follows_the_official_inference(model, video):
    result = Segmenter(model, short_side=SHORT).segment(video, "the red circle")
    q, masks, scores, boxes = _official(model, video, "the red circle", SHORT)
    (r,) = result
    assert r.masks.dtype == bool and r.masks.shape == video.shape[:3]
    assert r.query == q and (r.queries == q).all()
    np.testing.assert_array_equal(r.masks, masks)
    np.testing.assert_allclose(r.scores, scores, atol=2e-6)
    np.testing.assert_allclose(r.boxes, boxes, atol=1e-3)
    assert result.frame_names == ["00000", "00001", "00002", "00003", "00004"]


def test_preprocess_resizes_like_torchvision_resize_and_normalises(model, video):
    import torchvision.transforms as T

    seg = Segmenter(model, short_side=SHORT)
    x = seg.preprocess(video)
    assert x.shape == (5, 3, 32, 46)  # 30x44 -> shorter side 32, longer side int(32 * 44 / 30) = 46
    transform = T.Compose([T.Resize(SHORT), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    expected = torch.stack([transform(Image.fromarray(f)) for f in video])
    assert torch.equal(x, expected)  # bit for bit: same resize, same float operations in the same order


def test_several_expressions_run_the_backbone_once_and_equal_single_runs(model, video, monkeypatch):
    expressions = ["the red circle", "a dog running on the grass to the left", "the big blue square at the top"]
    seg = Segmenter(model, short_side=SHORT)
    calls = {"encode": 0, "decode": []}
    encode, decode = model.encode_video, model.predict_from_features

    def counting_encode(*args, **kwargs):
        calls["encode"] += 1
        return encode(*args, **kwargs)

    def counting_decode(visual, captions, caption_videos=None):
        calls["decode"].append(list(captions))
        return decode(visual, captions, caption_videos)

    monkeypatch.setattr(model, "encode_video", counting_encode)
    monkeypatch.setattr(model, "predict_from_features", counting_decode)
    together = seg.segment(video, expressions)
    assert calls == {"encode": 1, "decode": [expressions]}
    monkeypatch.undo()
    for text, shared in zip(expressions, together):
        (alone,) = seg.segment(video, [text])
        assert shared.expression == text and shared.query == alone.query
        np.testing.assert_array_equal(shared.masks, alone.masks)
        np.testing.assert_allclose(shared.scores, alone.scores, atol=1e-6)
        np.testing.assert_allclose(shared.boxes, alone.boxes, atol=1e-4)


def test_expressions_per_pass_bounds_the_batch_and_keeps_the_results(model, video, monkeypatch):
    expressions = ["the red circle", "a dog", "the big blue square at the top"]
    together = Segmenter(model, short_side=SHORT).segment(video, expressions)
    batches = []
    decode = model.predict_from_features

    def counting_decode(visual, captions, caption_videos=None):
        batches.append(len(captions))
        return decode(visual, captions, caption_videos)

    monkeypatch.setattr(model, "predict_from_features", counting_decode)
    chunked = Segmenter(model, short_side=SHORT, expressions_per_pass=2).segment(video, expressions)
    monkeypatch.undo()
    assert batches == [2, 1]
    for a, b in zip(together, chunked):
        assert a.query == b.query
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_array_equal(a.masks, b.masks)
    with pytest.raises(ValueError, match="expressions_per_pass must be >= 1"):
        Segmenter(model, expressions_per_pass=0)


def _per_clip_outputs(model, seg, video, expression, clip_length):
    outs = []
    for start in range(0, len(video), clip_length):
        with torch.no_grad():
            outs.append(model(seg.preprocess(video[start : start + clip_length])[None], [expression]))
    return outs


def test_clip_mode_picks_one_query_from_the_mean_score_over_all_clips(model, video):
    seg = Segmenter(model, short_side=SHORT, clip_length=2)
    (r,) = seg.segment(video, ["the small red circle moving left"])
    outs = _per_clip_outputs(model, seg, video, "the small red circle moving left", 2)
    logits = torch.cat([o["pred_logits"][0] for o in outs])  # [T, Q, 1]
    q = int(logits.sigmoid().mean(0).max(-1).values.argmax())
    assert (r.queries == q).all()
    masks = torch.cat([o["pred_masks"][0, :, q] for o in outs])
    expected = F.interpolate(masks[None], size=video.shape[1:3], mode="bilinear", align_corners=False)[0].sigmoid() > 0.5
    np.testing.assert_array_equal(r.masks, expected.numpy())
    np.testing.assert_allclose(r.scores, logits[:, q, 0].sigmoid().numpy(), atol=2e-6)


def test_clip_selection_picks_the_query_per_clip_like_the_official_davis_script(model, video):
    seg = Segmenter(model, short_side=SHORT, clip_length=2, query_selection="clip")
    (r,) = seg.segment(video, ["the small red circle moving left"])
    outs = _per_clip_outputs(model, seg, video, "the small red circle moving left", 2)
    expected = [int(o["pred_logits"][0].sigmoid().mean(0).max(-1).values.argmax()) for o in outs]
    assert r.queries.tolist() == [expected[0]] * 2 + [expected[1]] * 2 + [expected[2]]


def test_one_clip_as_long_as_the_video_equals_whole_video_inference(model, video):
    whole = Segmenter(model, short_side=SHORT).segment(video, ["a dog"])[0]
    clipped = Segmenter(model, short_side=SHORT, clip_length=len(video)).segment(video, ["a dog"])[0]
    np.testing.assert_array_equal(whole.masks, clipped.masks)
    np.testing.assert_array_equal(whole.scores, clipped.scores)


def test_clip_mode_spills_mask_logits_to_a_temporary_directory_removed_afterwards(model, video, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stream = Segmenter(model, short_side=SHORT, clip_length=2).stream(video, ["a dog"])
    spilled = list(tmp_path.glob("bifit-logits-*/*.npy"))
    assert len(spilled) == 3  # one file per clip, nothing held in memory meanwhile
    frames = list(stream)
    assert [f.index for f in frames] == list(range(5)) and frames[0].masks.shape == (1, 30, 44)
    np.testing.assert_array_equal(frames[3].frame, video[3])
    assert not list(tmp_path.glob("bifit-logits-*"))


def test_video_file_folder_image_and_stride(model, tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (6, 24, 32, 3), dtype=np.uint8)
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=12)
    decoded = read_frames(path).frames
    seg = Segmenter(model, short_side=SHORT, frame_stride=2)
    from_file = seg.segment(path, ["a dog"])
    from_array = seg.segment(decoded, ["a dog"])
    assert from_file.frame_names == ["00000", "00002", "00004"] and from_file.fps == 6.0
    np.testing.assert_array_equal(from_file[0].masks, from_array[0].masks)
    streamed = Segmenter(model, short_side=SHORT, frame_stride=2, clip_length=2).segment(path, ["a dog"])
    assert streamed.frame_names == from_file.frame_names and streamed[0].masks.shape == (3, 24, 32)

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames[:3]):
        Image.fromarray(f).save(folder / f"img_{i}.png")
    from_folder = Segmenter(model, short_side=SHORT, clip_length=2).segment(folder, ["a dog"])
    assert from_folder.frame_names == ["img_0", "img_1", "img_2"] and from_folder.fps is None
    np.testing.assert_array_equal(from_folder[0].masks, Segmenter(model, short_side=SHORT, clip_length=2).segment(
        frames[:3], ["a dog"])[0].masks)

    Image.fromarray(frames[0]).save(tmp_path / "one.jpg")
    single = Segmenter(model, short_side=SHORT).segment(tmp_path / "one.jpg", ["a dog"])
    assert single.frame_names == ["one"] and single[0].masks.shape == (1, 24, 32) and single[0].boxes.shape == (1, 4)


@pytest.mark.parametrize(
    ("expressions", "message"),
    [
        ([], "no expression given"),
        ([""], "expression 1 is empty"),
        (["a dog", "   \t"], "expression 2 is empty"),
        (["a dog", 3], "expression 2 is a int"),
        # Latin-1 bytes on a UTF-8 command line reach Python as surrogate escapes.
        (["a dog", "caf\udce9 au lait"], r"expression 2 is not valid UTF-8 text \(byte 0xe9 at position 3\)"),
        (["\ud83d"], r"expression 1 is not valid UTF-8 text \(character U\+D83D at position 0\)"),
    ],
)
def test_bad_expressions_are_refused_before_any_work(expressions, message):
    with pytest.raises(ExpressionError, match=message):
        check_expressions(expressions)


def test_an_expression_longer_than_the_text_encoder_accepts_is_refused(model, video):
    too_long = " ".join(["dog"] * 40)  # the tiny BERT accepts 32 tokens
    with pytest.raises(ExpressionError, match=r"expression 2 .* is 42 tokens long; the text encoder accepts at most 32"):
        Segmenter(model, short_side=SHORT).segment(video, ["a dog", too_long])


def test_the_text_encoder_refuses_text_that_is_not_utf8_whatever_its_route(model, video):
    with pytest.raises(ExpressionError, match=r"expression 2 is not valid UTF-8 text \(byte 0xff at position 2\)"):
        model.text_encoder.tokenize(["a dog", "a \udcff"], "cpu")
    with pytest.raises(ExpressionError, match="expression 1 is not valid UTF-8"):
        Segmenter(model, short_side=SHORT).segment(video, ["a \udcff"])


def test_bad_videos_and_settings_get_clear_errors(model, tmp_path):
    seg = Segmenter(model, short_side=SHORT)
    with pytest.raises(FileNotFoundError, match="input not found"):
        seg.segment(tmp_path / "missing.mp4", ["a dog"])
    with pytest.raises(ValueError, match="uint8"):
        seg.segment(np.zeros((2, 8, 8, 3), dtype=np.float32), ["a dog"])
    with pytest.raises(ValueError, match="no frames"):
        seg.segment(np.zeros((0, 8, 8, 3), dtype=np.uint8), ["a dog"])
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video" * 20)
    for clip_length in (None, 2):
        with pytest.raises(ValueError, match="cannot decode video"):
            Segmenter(model, short_side=SHORT, clip_length=clip_length).segment(tmp_path / "broken.mp4", ["a dog"])
    with pytest.raises(ValueError, match="clip_length"):
        Segmenter(model, clip_length=0)
    with pytest.raises(ValueError, match="frame_stride"):
        Segmenter(model, frame_stride=0)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        Segmenter(tmp_path / "nowhere")


def test_absurd_aspect_ratios_are_refused_before_the_model_runs(model, tmp_path, monkeypatch):
    Image.new("RGB", (4000, 2), (200, 30, 30)).save(tmp_path / "strip.png")
    (tmp_path / "frames").mkdir()
    Image.new("RGB", (4000, 2)).save(tmp_path / "frames" / "0.png")
    monkeypatch.setattr(Segmenter, "_forward", lambda *a: pytest.fail("the model ran"))
    for source in (tmp_path / "strip.png", tmp_path / "frames", np.zeros((3, 2, 4000, 3), np.uint8)):
        for clip_length in (None, 2):
            with pytest.raises(FrameSizeError, match=r"a 4000x2 frame resized to 720000x360 .* the limit of 4096 px"):
                Segmenter(model, clip_length=clip_length).segment(source, ["a dog"])
    with pytest.raises(FrameSizeError, match="strip.png: a 4000x2 frame"):
        Segmenter(model).segment(tmp_path / "strip.png", ["a dog"])
    with pytest.raises(FrameSizeError, match=r"video array of shape \(1, 2, 100, 3\): .* limit of 1000 px"):
        Segmenter(model, short_side=SHORT, max_long_side=1000).segment(np.zeros((1, 2, 100, 3), np.uint8), "a dog")
    with pytest.raises(ValueError, match="max_long_side must be a positive"):
        Segmenter(model, max_long_side=0)


def test_the_long_side_limit_can_be_raised_and_changes_no_result(model, video):
    strip = np.random.default_rng(1).integers(0, 256, (2, 2, 100, 3), dtype=np.uint8)
    (r,) = Segmenter(model, short_side=SHORT).segment(strip, "a dog")  # 32 x 1600: under the default limit
    assert r.masks.shape == (2, 2, 100)
    (r,) = Segmenter(model, short_side=SHORT, max_long_side=1600).segment(strip, "a dog")
    assert r.masks.shape == (2, 2, 100)
    limited = Segmenter(model, short_side=SHORT).segment(video, "the red circle")[0]
    unlimited = Segmenter(model, short_side=SHORT, max_long_side=None).segment(video, "the red circle")[0]
    np.testing.assert_array_equal(limited.masks, unlimited.masks)
    np.testing.assert_array_equal(limited.scores, unlimited.scores)


def test_default_checkpoint_is_the_bundled_demo_model_or_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(FileNotFoundError, match="bundled demo model is not installed"):
        default_checkpoint()
    target = tmp_path / "assets" / "demo_model"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert default_checkpoint() == Path(target)
