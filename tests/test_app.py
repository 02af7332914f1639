"""The web demo's limits and cleanup, driven over HTTP with Gradio's own client: uploads above the limit
are refused and stored nowhere; a request's overlay is removed once a later request replaces it, a
session's files when the session ends, and every file of every request when the server stops."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from media import write_video

pytest.importorskip("gradio", reason="the web demo needs the optional extra bifit[app] (gradio)")

import httpx  # noqa: E402  (a dependency of gradio)
from gradio_client import Client, handle_file  # noqa: E402

from bifit.app import SessionFiles, serve  # noqa: E402
from bifit.assets import demo_info, example_expressions, example_video, load_demo_model  # noqa: E402
from bifit.cli import main  # noqa: E402
from bifit.inference.predictor import Segmenter  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _files(folder: Path) -> set[Path]:
    """Every file and folder under `folder`."""
    return {p.relative_to(folder) for p in folder.rglob("*")}


def _video(path: Path) -> Path:
    frames = np.random.default_rng(0).integers(0, 256, (4, *demo_info().frame_size, 3), dtype=np.uint8)
    return write_video(path, frames, fps=4)


def _wait_for(condition, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(load_demo_model(), short_side=min(demo_info().frame_size))


@pytest.fixture()
def app(segmenter, tmp_path, monkeypatch):
    """The app served with a private Gradio temporary folder, an upload limit of 100 kB; yields
    (url, Gradio's folder, the files in it before any request)."""
    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    port = _free_port()
    running = serve(segmenter, port=port, example=(example_video(), example_expressions()), block=False,
                    max_upload_mb=0.1)
    try:
        yield f"http://127.0.0.1:{port}/", cache, _files(cache), running
    finally:
        running.close()


def test_uploads_above_the_limit_are_refused_and_stored_nowhere(app, tmp_path):
    url, cache, at_start, _ = app
    big = httpx.post(url + "gradio_api/upload", files={"files": ("big.mp4", b"\0" * 200_000)})
    assert big.status_code == 413 and "maximum allowed size" in big.text
    assert _files(cache) == at_start
    small = httpx.post(url + "gradio_api/upload", files={"files": ("small.mp4", b"\0" * 50_000)})
    assert small.status_code == 200


def test_requests_remove_what_they_wrote(app, tmp_path):
    url, cache, at_start, running = app
    video = _video(tmp_path / "mine.mp4")
    client = Client(url, verbose=False, download_files=False)
    first = Path(client.predict(handle_file(str(video)), "the red circle", api_name="/run")[0]["path"])
    assert first.is_file() and first.is_relative_to(cache)  # served where it was written: no copy
    (upload,) = [p for p in _files(cache) - at_start if p.name == "mine.mp4"]
    second = Path(client.predict(handle_file(str(video)), "the blue square", api_name="/run")[0]["path"])
    # The first overlay is no longer on the page: its folder is gone, the second is there.
    assert not first.parent.exists() and second.is_file()
    assert _files(cache) - at_start == {upload, upload.parent, second.relative_to(cache), second.parent.relative_to(cache)}
    # The session ends (the tab is closed): its upload and overlay go.
    client.close()
    assert _wait_for(lambda: _files(cache) == at_start), _files(cache) - at_start
    assert not second.parent.exists()


def test_every_file_of_every_request_is_removed_when_the_server_stops(app, tmp_path):
    url, cache, at_start, running = app
    client = Client(url, verbose=False, download_files=False)
    overlay = Path(client.predict(handle_file(str(_video(tmp_path / "mine.mp4"))), "the red circle",
                                  api_name="/run")[0]["path"])
    # Another session runs the bundled example, whose cached copy every session shares.
    Client(url, verbose=False, download_files=False).predict(
        handle_file(str(example_video())), "the red circle", api_name="/run")
    assert overlay.is_file()
    running.close()  # both sessions still open
    assert _wait_for(lambda: _files(cache) == at_start), _files(cache) - at_start
    assert example_video().name in {p.name for p in at_start}


def test_session_files_are_only_what_was_tracked(tmp_path):
    example = tmp_path / "example" / "shapes.mp4"
    example.parent.mkdir()
    shutil.copy(example_video(), example)
    shared = tmp_path / "cache" / "abc"
    shared.mkdir(parents=True)
    copy_of_example = shared / "shapes.mp4"  # what Gradio's content-addressed cache makes of the example
    shutil.copy(example, copy_of_example)
    upload = shared / "mine.mp4"
    shutil.copy(example, upload)
    neighbour = tmp_path / "cache" / "other" / "someone_elses.mp4"
    neighbour.parent.mkdir()
    neighbour.write_bytes(b"another app's upload")
    request = tmp_path / "cache" / "bifit-request-1"
    request.mkdir()
    (request / "overlay.mp4").write_bytes(b"x")
    package_file = example.parent / "shapes.txt"  # served from an allowed path, not uploaded
    package_file.write_text("the red circle")
    files = SessionFiles([example])
    cache = tmp_path / "cache"
    for path in (copy_of_example, upload, package_file, example):
        files.add_upload("s", path, cache)
    files.add_output("s", request)
    files.end_session("s")
    assert copy_of_example.is_file() and neighbour.is_file() and example.is_file() and package_file.is_file()
    assert not upload.exists() and not request.exists()
    assert files.sessions() == []


def test_the_upload_limit_is_an_option(capsys):
    assert main(["app", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be positive" in capsys.readouterr().err
