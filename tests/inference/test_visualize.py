"""Overlays: blended masks and boxes in distinct colours; mp4 (PyAV) and GIF (Pillow) writers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bifit.data.video import read_video_file
from bifit.inference.visualize import (
    GifWriter,
    Mp4Writer,
    color_palette,
    overlay_masks,
    write_gif,
    write_mp4,
)


def test_palette_colours_are_distinct_beyond_the_fixed_ones():
    colors = color_palette(25)
    assert len(colors) == 25 and len(set(colors)) == 25
    assert color_palette(3) == colors[:3]
    assert all(0 <= c <= 255 for color in colors for c in color)


def test_overlay_blends_masks_like_the_official_visualisation_and_outlines_boxes():
    frame = np.full((20, 30, 3), 100, dtype=np.uint8)
    a = np.zeros((20, 30), dtype=bool)
    a[2:6, 2:6] = True
    b = np.zeros((20, 30), dtype=bool)
    b[4:8, 4:8] = True  # overlaps a at [4:6, 4:6]: the later mask is on top
    colors = [(255, 0, 0), (0, 0, 255)]
    out = overlay_masks(frame, [a, b], boxes=[[12, 10, 25, 17], [0, 0, 1, 1]], colors=colors, box_width=1)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2, 2], [177, 50, 50])  # int(100 * 0.5 + 255 * 0.5) = 177
    np.testing.assert_array_equal(out[7, 7], [50, 50, 177])
    np.testing.assert_array_equal(out[5, 5], [88, 25, 152])  # red blend, then blue blend on top
    np.testing.assert_array_equal(out[10, 18], [255, 0, 0])  # top edge of the first box
    np.testing.assert_array_equal(out[17, 25], [255, 0, 0])  # its bottom-right corner
    np.testing.assert_array_equal(out[13, 18], [100, 100, 100])  # inside the box, outside the masks
    np.testing.assert_array_equal(frame, 100)  # the input is not modified


def test_overlay_refuses_mismatched_inputs():
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="does not fit"):
        overlay_masks(frame, [np.zeros((4, 4), dtype=bool)])
    with pytest.raises(ValueError, match="boxes"):
        overlay_masks(frame, [np.zeros((8, 8), dtype=bool)], boxes=[])
    with pytest.raises(ValueError, match="uint8"):
        overlay_masks(frame.astype(np.float32), [])


def _frames(n: int, height: int, width: int) -> list[np.ndarray]:
    colors = color_palette(n)
    return [np.full((height, width, 3), c, dtype=np.uint8) for c in colors]


def test_mp4_writer_round_trips_frames_through_pyav(tmp_path):
    frames = _frames(5, 32, 48)
    path = write_mp4(tmp_path / "out.mp4", frames, fps=8)
    decoded = read_video_file(path)
    assert decoded.frames.shape == (5, 32, 48, 3) and decoded.fps == 8.0
    for got, want in zip(decoded.frames, frames):
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 8  # lossy, but the colours survive


def test_mp4_writer_pads_odd_sizes_and_refuses_size_changes(tmp_path):
    with Mp4Writer(tmp_path / "odd.mp4", fps=5) as writer:
        writer.write(_frames(1, 15, 21)[0])
        with pytest.raises(ValueError, match="size"):
            writer.write(np.zeros((16, 22, 3), dtype=np.uint8))
    assert read_video_file(tmp_path / "odd.mp4").frames.shape == (1, 16, 22, 3)


def test_gif_writer_keeps_every_frame_shrunk_to_max_side(tmp_path):
    frames = _frames(4, 60, 100)
    path = write_gif(tmp_path / "out.gif", frames, fps=5, max_side=50)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (50, 30)
        assert gif.info["duration"] == 200 and gif.info["loop"] == 0
        gif.seek(2)
        assert np.abs(np.asarray(gif.convert("RGB")).astype(int) - frames[2][0, 0]).max() <= 8
    with pytest.raises(ValueError, match="no frames"):
        GifWriter(tmp_path / "empty.gif", fps=5).close()
