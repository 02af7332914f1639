"""The work behind the web demo's page, without a browser: the results table and the overlay."""

from __future__ import annotations

from pathlib import Path

from bifit.app import ExpressionSummary, results_html, segment_to_overlay
from bifit.assets import demo_info, example_expressions, example_video, load_demo_model
from bifit.data.video import read_video_file
from bifit.inference.predictor import Segmenter


def _row(text: str, query: int) -> ExpressionSummary:
    return ExpressionSummary(text, "#ff00ff", query, 0.5, 3, 4, 0.01)


def test_results_table_escapes_expressions_and_shows_the_query_only_when_asked() -> None:
    rows = [_row("the <b>red</b> circle", 2)]
    with_query = results_html(rows, show_query=True)
    assert "&lt;b&gt;red&lt;/b&gt;" in with_query and "<b>" not in with_query
    assert "<th>query</th>" in with_query and "<td>2</td>" in with_query
    without = results_html(rows, show_query=False)
    assert "query" not in without and without.count("<td>") == with_query.count("<td>") - 1


def test_the_overlay_is_enlarged_and_carries_a_legend_line_per_expression(tmp_path: Path) -> None:
    segmenter = Segmenter(load_demo_model(), short_side=min(demo_info().frame_size))
    expressions = example_expressions()
    rows = segment_to_overlay(segmenter, example_video(), expressions, tmp_path / "overlay.mp4")
    assert [r.expression for r in rows] == expressions
    frames = read_video_file(tmp_path / "overlay.mp4").frames
    source = read_video_file(example_video()).frames
    height, width = source.shape[1:3]
    assert frames.shape[0] == source.shape[0]
    scale = frames.shape[2] // width
    assert scale * min(height, width) >= 360 and frames.shape[2] == scale * width
    assert frames.shape[1] >= scale * height + 16 * len(expressions)  # the legend under the frame
