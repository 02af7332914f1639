"""Tests of video/frame reading and the decoded-frame cache (bifit.data.video)."""

from __future__ import annotations

import warnings
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from media import png_header_only, write_video
from bifit.data.video import VideoFrameCache, read_frame_folder, read_frames, read_image, read_video_file
from bifit.inference.core import load_frames

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]



def solid_frames(colors=COLORS, height: int = 32, width: int = 48) -> np.ndarray:
    return np.stack([np.full((height, width, 3), c, dtype=np.uint8) for c in colors])


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mov"])
def test_read_video_file_decodes_every_frame(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", solid_frames(), fps=10)
    video = read_video_file(path)
    assert video.frames.shape == (4, 32, 48, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(10.0)
    assert video.names == ["00000", "00001", "00002", "00003"]
    means = video.frames.reshape(4, -1, 3).mean(1)
    assert np.abs(means - np.array(COLORS)).max() < 8  # lossy codec, colours preserved
    assert len(video) == 4


def test_read_frames_dispatches_on_input_kind(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, c in enumerate(COLORS[:3]):
        Image.new("RGB", (20, 10), c).save(folder / f"{i:05d}.png")
    (folder / "notes.txt").write_text("ignored")
    video = read_frames(folder)
    assert video.frames.shape == (3, 10, 20, 3) and video.fps is None
    assert video.names == ["00000", "00001", "00002"]
    assert tuple(video.frames[1, 0, 0]) == COLORS[1]
    single = read_frames(folder / "00002.png")
    assert single.frames.shape == (1, 10, 20, 3) and single.names == ["00002"]
    assert read_frames(write_video(tmp_path / "v.mp4", solid_frames(), fps=10)).frames.shape[0] == 4


def test_clear_errors_for_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_frames(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError):
        read_video_file(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video" * 50)
    with pytest.raises(ValueError, match="corrupt.mp4"):
        read_video_file(corrupt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_frame_folder(empty)
    (tmp_path / "doc.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported input"):
        read_frames(tmp_path / "doc.txt")
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(bad_image)


def test_zero_frame_video_is_rejected(tmp_path):
    path = tmp_path / "zero.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    with pytest.raises(ValueError, match="contains no frames"):
        read_video_file(path)


def test_mixed_frame_sizes_are_rejected(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (10, 10)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="different sizes"):
        read_frame_folder(tmp_path)


def test_cache_memory_lru_and_disk_reuse(tmp_path):
    calls: list[Path] = []

    def decode(path: Path) -> np.ndarray:
        calls.append(path)
        return solid_frames()

    cache = VideoFrameCache(cache_dir=None, max_videos_in_memory=1, decode=decode)
    cache.get("a", tmp_path / "a.mp4")
    cache.get("a", tmp_path / "a.mp4")
    assert len(calls) == 1
    cache.get("b", tmp_path / "b.mp4")
    cache.get("a", tmp_path / "a.mp4")  # evicted by b
    assert len(calls) == 3

    calls.clear()
    disk = VideoFrameCache(cache_dir=tmp_path / "cache", max_videos_in_memory=0, decode=decode)
    first = disk.get("a", tmp_path / "a.mp4")
    assert (tmp_path / "cache" / "a.npy").is_file()
    second = VideoFrameCache(cache_dir=tmp_path / "cache", max_videos_in_memory=0, decode=decode).get("a", "unused")
    assert len(calls) == 1
    assert np.array_equal(first, second) and second.dtype == np.uint8
    assert not list((tmp_path / "cache").glob(".*"))  # no temp files left behind
    with pytest.raises(ValueError):
        VideoFrameCache(max_videos_in_memory=-1)


def test_cache_decodes_real_video_losslessly(tmp_path):
    path = write_video(tmp_path / "v.mp4", solid_frames(), fps=10)
    cached = VideoFrameCache(cache_dir=tmp_path / "cache").get("v", path)
    assert np.array_equal(np.asarray(cached), read_video_file(path).frames)


def test_16_bit_greyscale_frames_are_scaled_to_8_bits_not_saturated(tmp_path):
    ramp = (np.arange(24 * 40, dtype=np.uint32).reshape(24, 40) * 68).astype(np.uint16)  # 0 .. 65212
    Image.fromarray(ramp).save(tmp_path / "pil.png")
    cv2.imwrite(str(tmp_path / "cv2.png"), ramp)
    cv2.imwrite(str(tmp_path / "cv2.tif"), ramp)
    expected = np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2)
    for name in ("pil.png", "cv2.png", "cv2.tif"):
        with Image.open(tmp_path / name) as img:
            assert img.mode.startswith("I;16")  # a real 16-bit file
        frames = read_image(tmp_path / name).frames[0]
        np.testing.assert_array_equal(frames, expected)
        assert (frames == 255).mean() < 0.01  # convert("RGB") made 99.6% of it white
        # The same reader feeds the benchmark predictions: the tensor equals that of the 8-bit frame.
        Image.fromarray(expected).save(tmp_path / "eight.png")
        np.testing.assert_array_equal(load_frames([tmp_path / name], 24)[0], load_frames([tmp_path / "eight.png"], 24)[0])


def test_16_bit_colour_frames_keep_their_high_byte(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 65536, (16, 20, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png").frames[0], (rgb >> 8).astype(np.uint8))


def test_float_frames_are_refused_with_a_clear_message(tmp_path):
    Image.fromarray(np.random.default_rng(0).random((8, 8)).astype(np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"f.tif: its pixels are 32-bit floats \(mode F\)"):
        read_image(tmp_path / "f.tif")


def test_decompression_bombs_are_refused_naming_the_file(tmp_path, monkeypatch):
    bomb = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 100
    with pytest.raises(ValueError, match=r"cannot read image .*bomb.png: Image size \(900000000 pixels\)"):
        read_image(bomb)
    with pytest.raises(ValueError, match="bomb.png"):
        load_frames([bomb], 360)
    # Between PIL's limit and twice it PIL only warns (and decodes); bifit refuses.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"big.png: Image size \(1200 pixels\) exceeds limit .*MAX_IMAGE_PIXELS"):
            read_frame_folder(_folder_with(tmp_path, "big.png"))


def _folder_with(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / name).rename(folder / name)
    return folder


def test_frames_whose_names_differ_only_in_extension_are_refused(tmp_path):
    for name in ("0000.png", "0001.jpg", "0001.png", "0002.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    with pytest.raises(ValueError, match=r"holds 0001.jpg and 0001.png: frames are named by file name without ext"):
        read_frame_folder(tmp_path)
    (tmp_path / "0001.png").rename(tmp_path / "0001.PNG")
    with pytest.raises(ValueError, match="0001.PNG and 0001.jpg"):
        read_frames(tmp_path)
    (tmp_path / "0001.PNG").unlink()
    assert read_frame_folder(tmp_path).names == ["0000", "0001", "0002"]
