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
    display_scale,
    overlay_masks,
    render_overlay,
    render_strip,
    write_gif,
    write_mp4,
)


def test_palette_colours_are_distinct_beyond_the_fixed_ones():
    colors = color_palette(25)
    assert len(colors) == 25 and len(set(colors)) == 25
    assert color_palette(3) == colors[:3]
    assert all(0 <= c <= 255 for color in colors for c in color)


def test_palette_skips_colours_close_to_those_to_avoid():
    scene = [(225, 45, 40), (40, 185, 70), (45, 95, 235), (240, 215, 35)]  # the synthetic world's colours
    colors = color_palette(8, avoid=scene)
    assert len(set(colors)) == 8
    for color in colors:
        assert min(np.linalg.norm(np.subtract(color, s)) for s in scene) >= 80
    assert color_palette(3, avoid=[]) == color_palette(3)


def test_display_scale_enlarges_small_frames_by_whole_numbers():
    assert display_scale(96, 128, 360) == 4  # 96 x 4 = 384 >= 360
    assert display_scale(360, 640, 360) == 1
    assert display_scale(720, 1280, 360) == 1  # never shrinks
    assert display_scale(96, 128, None) == 1
    assert display_scale(2, 4000, 360) == 1  # a strip is not made 720000 pixels long
    assert display_scale(20, 400, 360) == 4  # enlarged only as far as a 1920-pixel long side


def _disk(height: int, width: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_render_overlay_outlines_masks_so_they_show_on_their_own_colour():
    blue = (45, 95, 235)
    frame = np.full((24, 32, 3), 80, dtype=np.uint8)
    shape = _disk(24, 32, 12, 10, 6)
    frame[shape] = blue  # a blue object...
    masks = shape[None]
    out = render_overlay(frame, masks, None, [blue], scale=1)  # ...with a blue mask
    assert out.shape == frame.shape
    outer = np.logical_xor(np.pad(shape, 1)[2:, 1:-1] | np.pad(shape, 1)[:-2, 1:-1]
                           | np.pad(shape, 1)[1:-1, 2:] | np.pad(shape, 1)[1:-1, :-2] | shape, shape)
    assert outer.any() and np.all(out[outer].max(axis=1) <= 16)  # a dark ring just outside the mask
    # Where the mask meets the background, its edge differs from both the object and the frame.
    assert np.abs(out[outer].astype(int) - 80).min() > 50


def test_render_overlay_enlarges_draws_boxes_only_for_found_objects_and_adds_a_legend():
    frame = np.full((12, 16, 3), 100, dtype=np.uint8)
    found = np.zeros((12, 16), dtype=bool)
    found[2:6, 3:8] = True
    empty = np.zeros_like(found)
    colors = [(255, 0, 255), (0, 255, 255)]
    boxes = np.array([[3, 2, 7, 5], [9, 6, 14, 10]], dtype=np.float32)
    plain = render_overlay(frame, np.stack([found, empty]), boxes, colors, scale=4)
    assert plain.shape == (48, 64, 3)
    assert not np.any(np.all(plain == (0, 255, 255), axis=2))  # the empty mask's box is not drawn
    assert np.all(plain[4 * 2, 4 * 3 + 1 : 4 * 7 - 1] == (255, 0, 255))  # the found one's box, scaled
    inside = plain[4 * 3 + 2, 4 * 5]
    assert inside[0] > inside[1] and inside[2] > inside[1]  # filled in its colour
    legend = render_overlay(frame, np.stack([found, empty]), boxes, colors,
                            legend=["the magenta one", "the cyan one that is not there"], scale=4)
    assert legend.shape[1] == 64 and legend.shape[0] > 48
    np.testing.assert_array_equal(legend[:48], plain)
    strip = legend[48:]
    for color in colors:  # each expression's swatch is in the legend
        assert np.any(np.all(strip == color, axis=2))


def test_render_overlay_refuses_mismatched_inputs():
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    masks = np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="colours"):
        render_overlay(frame, masks, None, [(1, 2, 3)])
    with pytest.raises(ValueError, match="legend"):
        render_overlay(frame, masks, None, color_palette(2), legend=["one"])
    with pytest.raises(ValueError, match="masks must be"):
        render_overlay(frame, np.zeros((2, 4, 4), dtype=bool), None, color_palette(2))
    with pytest.raises(ValueError, match="scale"):
        render_overlay(frame, masks, None, color_palette(2), scale=0)


def test_render_strip_darkens_outside_the_mask_and_outlines_boxes():
    from bifit.data.synthetic import SceneConfig, generate_clip

    clip = generate_clip(4, SceneConfig(num_frames=3, size=(40, 50)))
    obj = clip.objects[0]
    plain = render_strip(clip.frames, obj.masks, gap=2)
    assert plain.shape == (40, 3 * 50 + 2 * 2, 3) and plain.dtype == np.uint8
    outside = ~obj.masks[0]
    assert np.array_equal(plain[:, :50][outside], clip.frames[0][outside] // 3)
    assert np.array_equal(plain[:, :50][~outside], clip.frames[0][~outside])
    strip = render_strip(clip.frames, obj.masks, obj.boxes, gap=2)
    x1, y1, _, y2 = obj.boxes[0].astype(int)
    assert obj.valid[0] == 1 and np.all(strip[y1 : y2 + 1, x1] == 255)


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


def test_gif_keeps_the_legend_colours_of_an_overlay(tmp_path):
    from bifit.data.synthetic import COLOURS, SceneConfig, generate_clip

    clip = generate_clip(3, SceneConfig(num_frames=1))
    masks = np.stack([o.masks[0] for o in clip.objects])
    masks[1] = False  # this expression's colour is only in its legend swatch
    colors = color_palette(len(masks), avoid=list(COLOURS.values()))
    frame = render_overlay(clip.frames[0], masks, None, colors, legend=["a"] * len(masks), scale=4)
    path = write_gif(tmp_path / "overlay.gif", [frame], fps=5, max_side=None)
    with Image.open(path) as gif:
        decoded = np.asarray(gif.convert("RGB")).astype(int)
    legend = decoded[384:]
    for color in colors:
        assert np.abs(legend - color).max(axis=2).min() <= 4, color


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
