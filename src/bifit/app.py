"""The web demo behind `bifit app`: a Gradio page where one uploads a video (or picks the bundled
example), types referring expressions one per line, and gets the overlay video and a table of
per-expression results.

Gradio is an optional dependency (`pip install "bifit[app]"`); it is imported only by `build_app`
and `serve`, so the rest of this module (the work done for a request) is usable and testable
without it.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .inference.predictor import Segmenter

__all__ = ["ExpressionSummary", "build_app", "parse_expressions", "results_html", "segment_to_overlay", "serve"]

#: Frame rate of the overlay when the input has none (frame folders, images).
DEFAULT_FPS = 8.0
TITLE = "BIFIT: segment what a sentence describes in a video"


@dataclass
class ExpressionSummary:
    """What one expression found over the whole video.

    Attributes:
        expression: the text.
        color: "#rrggbb" of its mask and box in the overlay.
        query: the query slot chosen (first frame's, the only one with whole-video selection).
        mean_score: mean over frames of the chosen query's score in [0, 1].
        frames_found: frames whose mask is not empty; num_frames: frames processed.
        mean_area: mean over frames of the mask area as a fraction of the frame.
    """

    expression: str
    color: str
    query: int
    mean_score: float
    frames_found: int
    num_frames: int
    mean_area: float


def parse_expressions(text: str | None) -> list[str]:
    """The non-blank lines of `text`, stripped (one referring expression per line)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def segment_to_overlay(
    segmenter: Segmenter,
    video: str | os.PathLike[str],
    expressions: Sequence[str],
    output: str | os.PathLike[str],
) -> list[ExpressionSummary]:
    """Segment `expressions` in `video` and write the overlay (masks, boxes, legend) to `output` (mp4).

    Frames are rendered as the model hands them out, so memory stays flat with `clip_length` set.

    Raises:
        FileNotFoundError / ValueError / ExpressionError: from `Segmenter.stream` (missing or
            unreadable video, no frames, empty or too long expression).
    """
    from .inference.visualize import Mp4Writer, color_palette, display_scale, render_overlay

    if video is None or not Path(video).is_file():
        raise FileNotFoundError("no video: upload one or pick the example")
    expressions = segmenter.check_expressions(list(expressions))
    colors = color_palette(len(expressions))
    e = len(expressions)
    score_sum, area_sum, found = np.zeros(e), np.zeros(e), np.zeros(e, dtype=np.int64)
    with segmenter.stream(video, expressions) as result:
        fps = result.fps or DEFAULT_FPS
        scale = display_scale(*result.frame_size)
        with Mp4Writer(output, fps) as writer:
            for frame in result:
                writer.write(render_overlay(frame.frame, frame.masks, frame.boxes, colors, expressions, scale))
                score_sum += frame.scores
                areas = frame.masks.reshape(e, -1).mean(axis=1)
                area_sum += areas
                found += areas > 0
        t = result.num_frames
        queries = result.queries[:, 0]
    return [
        ExpressionSummary(text, "#{:02x}{:02x}{:02x}".format(*colors[i]), int(queries[i]), float(score_sum[i] / t),
                          int(found[i]), t, float(area_sum[i] / t))
        for i, text in enumerate(expressions)
    ]


def results_html(rows: Sequence[ExpressionSummary], show_query: bool = True) -> str:
    """An HTML table of the results (expressions escaped), one row per expression.

    Args:
        rows: one summary per expression.
        show_query: add the chosen query slot (meaningless for a model with a single query).
    """
    query_head = "<th>query</th>" if show_query else ""
    head = ("<tr><th></th><th>expression</th><th>mean score</th><th>frames with a mask</th>"
            f"<th>mean area</th>{query_head}</tr>")
    body = "".join(
        f'<tr><td><span class="swatch" style="background:{r.color}"></span></td>'
        f"<td>{html.escape(r.expression)}</td><td>{r.mean_score:.3f}</td>"
        f"<td>{r.frames_found} / {r.num_frames}</td><td>{100 * r.mean_area:.1f} %</td>"
        + (f"<td>{r.query}</td>" if show_query else "") + "</tr>"
        for r in rows
    )
    return f'<table id="bifit-results">{head}{body}</table>'


_CSS = """
#bifit-results { border-collapse: collapse; width: 100%; }
#bifit-results th, #bifit-results td { padding: 4px 10px; text-align: left; border-bottom: 1px solid #ddd; }
#bifit-results .swatch { display: inline-block; width: 14px; height: 14px; border-radius: 3px; }
"""


def build_app(
    segmenter: Segmenter,
    work_dir: str | os.PathLike[str],
    example: tuple[str | os.PathLike[str], Sequence[str]] | None = None,
    description: str = "",
) -> Any:
    """The Gradio page (a `gr.Blocks`), not yet launched.

    Args:
        segmenter: does the work; requests are served one at a time.
        work_dir: overlays are written here (one sub-directory per request).
        example: (video, expressions) offered as a clickable example.
        description: markdown shown under the title (e.g. which model is loaded).
    """
    import gradio as gr

    from .modeling.text_encoder import ExpressionError

    def run(video: str | None, text: str | None) -> tuple[str, str]:
        out_dir = Path(tempfile.mkdtemp(prefix="request-", dir=work_dir))
        overlay = out_dir / "overlay.mp4"
        try:
            rows = segment_to_overlay(segmenter, video, parse_expressions(text), overlay)
        except (ExpressionError, FileNotFoundError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        return str(overlay), results_html(rows, show_query=segmenter.model.config.num_queries > 1)

    def clear() -> tuple[None, str]:
        return None, ""

    with gr.Blocks(title="bifit", analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}\n{description}")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="video", sources=["upload"], include_audio=True, elem_id="bifit-video")
                text = gr.Textbox(label="expressions, one per line", lines=3, elem_id="bifit-expressions",
                                  placeholder="the red circle moving\nthe big square")
                button = gr.Button("Segment", variant="primary", elem_id="bifit-run")
            with gr.Column():
                overlay = gr.Video(label="overlay", interactive=False, elem_id="bifit-overlay")
                table = gr.HTML(elem_id="bifit-table")
        if example is not None:
            gr.Examples([[str(example[0]), "\n".join(example[1])]], inputs=[video, text], label="example",
                        example_labels=["synthetic shapes"])
        # The previous result goes as soon as a new request starts, so a failed one shows no stale table.
        button.click(clear, outputs=[overlay, table], queue=False).then(run, inputs=[video, text],
                                                                         outputs=[overlay, table])
    return app


def serve(
    segmenter: Segmenter,
    work_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int | None = None,
    example: tuple[str | os.PathLike[str], Sequence[str]] | None = None,
    description: str = "",
    block: bool = True,
) -> Any:
    """Build the page and serve it on `host:port` (Gradio picks a free port from 7860 when None).

    With `block=False` it returns the running `gr.Blocks` at once (`.close()` stops it); otherwise
    it serves until interrupted. Overlays are written under `work_dir`, which the caller owns.
    """
    app = build_app(segmenter, work_dir, example, description)
    allowed = [str(work_dir)] + ([str(Path(example[0]).parent)] if example is not None else [])
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True,
               allowed_paths=allowed, css=_CSS, inbrowser=False, share=False)
    return app
