"""The web demo behind `bifit app`: a Gradio page where one uploads a video (or picks the bundled
example), types referring expressions one per line, and gets the overlay video and a table of
per-expression results.

Gradio is an optional dependency (`pip install "bifit[app]"`); it is imported only by `build_app`
and `serve`, so the rest of this module (the work done for a request) is usable and testable
without it.
"""

# No `from __future__ import annotations` here: Gradio passes the request to a handler only when the
# `gr.Request` annotation is an object it can resolve, and `gr` is imported inside `build_app`.
import contextlib
import filecmp
import html
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .inference.predictor import Segmenter


__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "ExpressionSummary",
    "SessionFiles",
    "build_app",
    "parse_expressions",
    "results_html",
    "segment_to_overlay",
    "serve",
]

#: Frame rate of the overlay when the input has none (frame folders, images).
DEFAULT_FPS = 8.0
#: Default cap on the size of an uploaded video, in megabytes (`bifit app --max-upload-mb`).
DEFAULT_MAX_UPLOAD_MB = 200
#: (every, older than) seconds: Gradio also removes this app's files older than a day, hourly (for
#: sessions whose end was never seen), and all of them when the server stops.
_CACHE_SWEEP = (3600, 86400)
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
    segmenter: "Segmenter",
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


class SessionFiles:
    """The files this app's requests wrote, by browser session, each removed once it is no longer shown.

    Tracked: uploaded videos and the request folders that hold the overlays. A request's folder goes
    when a later request of the same session replaces its overlay on the page; all of a session's
    files go when the session ends (its tab is closed or reloaded); whatever is left goes when the app
    stops. Only tracked paths are removed, and a folder that held an upload only once it is empty.

    Args:
        keep: files never removed (the bundled example, which every session shares).
    """

    def __init__(self, keep: Sequence[str | os.PathLike[str]] = ()) -> None:
        self._keep = [Path(p) for p in keep]
        self._lock = threading.Lock()
        self._uploads: dict[str, set[Path]] = {}
        self._outputs: dict[str, list[Path]] = {}

    def _kept(self, path: Path) -> bool:
        # Gradio's cache is content-addressed: a copy of the example with its name is the example.
        return any(path.name == k.name and filecmp.cmp(path, k, shallow=False) for k in self._keep if k.is_file())

    def add_upload(self, session: str, path: str | os.PathLike[str], uploads: str | os.PathLike[str]) -> None:
        """Track an uploaded file of `session` if it lies in the folder `uploads` (Gradio's; a file served
        from anywhere else is not the app's), and is not the bundled example."""
        path = Path(path)
        if path.is_file() and path.resolve().is_relative_to(Path(uploads).resolve()) and not self._kept(path):
            with self._lock:
                self._uploads.setdefault(session, set()).add(path)

    def add_output(self, session: str, folder: str | os.PathLike[str]) -> None:
        """Track the folder of a finished request of `session`, removing the earlier ones it replaces."""
        with self._lock:
            earlier = self._outputs.get(session, [])
            self._outputs[session] = [Path(folder)]
        for old in earlier:
            shutil.rmtree(old, ignore_errors=True)

    def end_session(self, session: str) -> None:
        """Remove every file of `session`."""
        with self._lock:
            uploads, outputs = self._uploads.pop(session, set()), self._outputs.pop(session, [])
        for folder in outputs:
            shutil.rmtree(folder, ignore_errors=True)
        for path in uploads:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # Gradio's folder for the upload, if nothing else is in it

    def end_all(self) -> None:
        """Remove the files of every session."""
        with self._lock:
            sessions = set(self._uploads) | set(self._outputs)
        for session in sessions:
            self.end_session(session)

    def sessions(self) -> list[str]:
        """The sessions that have files."""
        with self._lock:
            return sorted(set(self._uploads) | set(self._outputs))


def build_app(
    segmenter: "Segmenter",
    example: tuple[str | os.PathLike[str], Sequence[str]] | None = None,
    description: str = "",
    files: SessionFiles | None = None,
) -> Any:
    """The Gradio page (a `gr.Blocks`), not yet launched.

    Args:
        segmenter: does the work; requests are served one at a time.
        example: (video, expressions) offered as a clickable example.
        description: markdown shown under the title (e.g. which model is loaded).
        files: tracks what requests write (see `SessionFiles`); overlays go to a folder of their own
            per request inside Gradio's cache folder, so Gradio serves them without another copy.
    """
    import gradio as gr

    from .modeling.text_encoder import ExpressionError

    files = files if files is not None else SessionFiles([example[0]] if example is not None else [])

    def remember_upload(video: str | None, request: gr.Request) -> None:
        if video is not None and request.session_hash is not None:
            files.add_upload(request.session_hash, video, overlay.GRADIO_CACHE)

    def run(video: str | None, text: str | None, request: gr.Request) -> tuple[str, str]:
        remember_upload(video, request)
        cache = Path(overlay.GRADIO_CACHE)
        cache.mkdir(parents=True, exist_ok=True)
        out_dir = Path(tempfile.mkdtemp(prefix="bifit-request-", dir=cache))
        try:
            rows = segment_to_overlay(segmenter, video, parse_expressions(text), out_dir / "overlay.mp4")
        except (ExpressionError, FileNotFoundError, ValueError, OSError) as exc:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise gr.Error(str(exc)) from None
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        files.add_output(request.session_hash or "", out_dir)
        return str(out_dir / "overlay.mp4"), results_html(rows, show_query=segmenter.model.config.num_queries > 1)

    def clear() -> tuple[None, str]:
        return None, ""

    def end_session(request: gr.Request) -> None:
        if request.session_hash is not None:
            files.end_session(request.session_hash)

    with gr.Blocks(title="bifit", analytics_enabled=False, delete_cache=_CACHE_SWEEP) as app:
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
        video.upload(remember_upload, inputs=[video], outputs=None, show_progress="hidden")
        # The previous result goes as soon as a new request starts, so a failed one shows no stale table.
        button.click(clear, outputs=[overlay, table], queue=False).then(run, inputs=[video, text],
                                                                         outputs=[overlay, table])
        app.unload(end_session)
    return app


def serve(
    segmenter: "Segmenter",
    host: str = "127.0.0.1",
    port: int | None = None,
    example: tuple[str | os.PathLike[str], Sequence[str]] | None = None,
    description: str = "",
    block: bool = True,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
) -> Any:
    """Build the page and serve it on `host:port` (Gradio picks a free port from 7860 when None).

    With `block=False` it returns the running `gr.Blocks` at once (`.close()` stops it); otherwise
    it serves until interrupted. Uploads larger than `max_upload_mb` megabytes are refused (HTTP 413,
    and a message in the page). When the server stops, every file its requests wrote is removed.
    """
    if not max_upload_mb > 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    files = SessionFiles([example[0]] if example is not None else [])
    app = build_app(segmenter, example, description, files)

    @contextlib.asynccontextmanager
    async def remove_files_at_shutdown(_: Any) -> Any:
        try:
            yield
        finally:
            files.end_all()

    allowed = [str(Path(example[0]).parent)] if example is not None else []
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True,
               allowed_paths=allowed, css=_CSS, inbrowser=False, share=False,
               max_file_size=int(max_upload_mb * 1024 * 1024), app_kwargs={"lifespan": remove_files_at_shutdown})
    return app
