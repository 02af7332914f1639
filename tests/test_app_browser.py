"""End-to-end test of the web demo (`bifit app`) in headless Chromium driven by Selenium.

The page is served in-process on 127.0.0.1 with the bundled demo model; the browser picks the
bundled example, runs it and must show the overlay video and one results row per expression; leaving
the page removes the session's overlay, and a video above the upload limit is refused in the page.
Skipped only where Gradio, Selenium, Chromium or its driver is not installed (CI installs
Debian's `chromium` and `chromium-driver`).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytest.importorskip("gradio", reason="the web demo needs the optional extra bifit[app] (gradio)")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from bifit.app import serve  # noqa: E402
from bifit.assets import demo_info, example_expressions, example_video, load_demo_model  # noqa: E402
from bifit.inference.predictor import Segmenter  # noqa: E402


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _find("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMEDRIVER = _find("chromedriver", "chromium-driver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    segmenter = Segmenter(load_demo_model(), short_side=min(demo_info().frame_size))
    port = _free_port()
    with pytest.MonkeyPatch.context() as patch:  # a private Gradio folder, to see what the page leaves in it
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        app = serve(segmenter, port=port, example=(example_video(), example_expressions()), block=False,
                    max_upload_mb=0.5)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.close()


@pytest.fixture()
def browser(tmp_path: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_example_is_segmented_in_the_browser(app_url: str, browser, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 45)
    browser.get(app_url)
    # Picking the example fills the video and the expressions.
    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[contains(., 'synthetic shapes')]"))).click()
    textbox = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#bifit-expressions textarea")))
    wait.until(lambda _: textbox.get_attribute("value").strip() != "")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#bifit-video video")))
    # Type one more expression of our own after the example's.
    textbox.send_keys("\nthe square")
    browser.find_element(By.CSS_SELECTOR, "#bifit-run").click()

    rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bifit-results tr")[1:] or False)
    browser.save_screenshot(str(tmp_path / "app.png"))  # kept by pytest for a look when it fails
    expected = example_expressions() + ["the square"]
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == expected
    # The bundled model has one query: a query column would always read 0.
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#bifit-results th")]
    assert "mean score" in headers and "query" not in headers
    for row in rows:
        score = float(row.find_elements(By.TAG_NAME, "td")[2].text)
        assert 0.0 <= score <= 1.0
    video = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#bifit-overlay video")))
    assert video.get_attribute("src")
    # The overlay plays in the browser: Chromium decoded its first frame.
    wait.until(lambda d: d.execute_script("return arguments[0].readyState >= 2 && arguments[0].videoWidth > 0", video))


def test_a_failed_request_shows_its_error_and_no_earlier_result(app_url: str, browser) -> None:
    wait = WebDriverWait(browser, 45)
    browser.get(app_url)
    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[contains(., 'synthetic shapes')]"))).click()
    textbox = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#bifit-expressions textarea")))
    wait.until(lambda _: textbox.get_attribute("value").strip() != "")
    browser.find_element(By.CSS_SELECTOR, "#bifit-run").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#bifit-results tr")[1:] or False)
    textbox.send_keys(Keys.CONTROL, "a")
    textbox.send_keys(Keys.DELETE, "   ")
    browser.find_element(By.CSS_SELECTOR, "#bifit-run").click()
    wait.until(lambda d: "no expression given" in d.find_element(By.TAG_NAME, "body").text)
    assert not browser.find_elements(By.CSS_SELECTOR, "#bifit-results tr")


def _served_path(video) -> Path:
    """The file behind a <video> of the page (Gradio serves files at /gradio_api/file=<path>)."""
    return Path(unquote(urlparse(video.get_attribute("src")).path.split("file=", 1)[1]))


def test_closing_the_page_removes_the_overlay_of_its_session(app_url: str, browser) -> None:
    wait = WebDriverWait(browser, 45)
    browser.get(app_url)
    wait.until(EC.element_to_be_clickable((By.XPATH, "//button[contains(., 'synthetic shapes')]"))).click()
    textbox = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#bifit-expressions textarea")))
    wait.until(lambda _: textbox.get_attribute("value").strip() != "")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#bifit-video video")))
    browser.find_element(By.CSS_SELECTOR, "#bifit-run").click()
    video = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#bifit-overlay video")))
    overlay = _served_path(video)
    assert overlay.is_file() and overlay.parent.name.startswith("bifit-request-")
    browser.get("about:blank")  # the tab leaves the page: its session ends
    WebDriverWait(browser, 30).until(lambda _: not overlay.parent.exists())


def test_a_video_above_the_upload_limit_is_refused_in_the_page(app_url: str, browser, tmp_path: Path) -> None:
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * 600_000)  # the fixture's limit is 0.5 MB
    wait = WebDriverWait(browser, 45)
    browser.get(app_url)
    upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#bifit-video input[type=file]")))
    upload.send_keys(str(big))
    # Gradio's page says 'File(s) exceed the maximum allowed size of 512.0 Kb: "big.mp4"'.
    wait.until(lambda d: 'maximum allowed size of 512.0 Kb: "big.mp4"' in d.find_element(By.TAG_NAME, "body").text)
