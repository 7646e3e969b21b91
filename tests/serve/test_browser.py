"""The web page in a real browser: Selenium drives Debian's chromium against the service on the tiny checkpoint.

Skipped when chromium or its driver is missing, unless CI is set (then a failure: `make test` installs them).
DETECTOR_SAVE_SCREENSHOT=1 writes the screenshot to docs/benchmarks/serve/page.png instead of tmp_path.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from detector.serve.app import create_app
from detector.serve.predictor import load_predictor
from detector.serve.settings import Settings

# A real browser starts for each test: slow (deselect with -m "not slow").
pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "serve" / "page.png"


def _require_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.access(path, os.X_OK) or shutil.which(path))]
    if missing:
        message = f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{message} but CI is set: the browser test must run in CI")
        pytest.skip(message)


class CountingPredictor:
    """The real predictor, counting its model calls: moving the slider must not add one."""

    def __init__(self, predictor) -> None:
        self.predictor, self.class_names, self.calls = predictor, predictor.class_names, 0

    def predict_batch(self, images, score_thresh=None, classes=None, max_det=None):
        self.calls += 1
        return self.predictor.predict_batch(images, score_thresh, classes, max_det)


@pytest.fixture
def served(tiny_checkpoint: Path):
    """(base URL, counting predictor) of the service running in uvicorn on a free port, in a thread."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # DETECTOR_SCREENSHOT_MODEL: a trained model for the README's screenshot (with DETECTOR_SAVE_SCREENSHOT=1)
    model = Path(os.environ.get("DETECTOR_SCREENSHOT_MODEL") or tiny_checkpoint)
    predictor = CountingPredictor(load_predictor(model))
    app = create_app(predictor, Settings(model_name=model.name, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 30 s"
    yield f"http://127.0.0.1:{port}", predictor
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def browser():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _rows(driver) -> int:
    return len(driver.find_elements("css selector", "#detections tbody tr"))


def _set_slider(driver, value: float) -> None:
    driver.execute_script("const s = document.getElementById('score'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input', {bubbles: true}));", str(value))


def _api_count(base: str, image: Path, threshold: str) -> int:
    with image.open("rb") as file:
        response = httpx.post(f"{base}/v1/detect", params={"score_thresh": threshold},
                              files={"file": (image.name, file, "image/jpeg")}, timeout=60)
    assert response.status_code == 200, response.text
    return len(response.json()["detections"])


def test_page_draws_lists_and_filters_detections(served, browser, shared_data: Path, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    base, predictor = served
    image = shared_data / "kitti_tiny" / "training" / "image_2" / "000047.jpeg"  # a validation frame with cars
    browser.get(f"{base}/")
    WebDriverWait(browser, 20).until(lambda d: "classes:" in d.find_element("id", "model").text)
    browser.find_element("id", "file").send_keys(str(image))
    WebDriverWait(browser, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state")
                                     in ("done", "error"))
    assert browser.find_element("tag name", "body").get_attribute("data-state") == "done", \
        browser.find_element("id", "status").text
    width, height = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
    assert [width, height] == list(cv2.imread(str(image)).shape[1::-1])  # the canvas has the image's own size

    # the table shows what the API returns for the threshold the page shows
    threshold = browser.find_element("id", "score").get_attribute("value")
    shown = _rows(browser)
    assert browser.find_element("id", "count").text == str(shown)
    assert shown == _api_count(base, image, threshold)

    # moving the slider filters in the page: the table shrinks (or stays) and the model is not called again
    _set_slider(browser, 0)
    everything = _rows(browser)
    assert everything >= shown and everything == _api_count(base, image, "0")
    calls = predictor.calls
    previous = everything
    for value in (0.1, 0.3, 0.6, 0.9):
        _set_slider(browser, value)
        rows = _rows(browser)
        assert rows <= previous and browser.find_element("id", "count").text == str(rows)
        assert browser.find_element("id", "score-value").text == f"{value:.2f}"
        previous = rows
    assert predictor.calls == calls

    _set_slider(browser, 0.5)
    target = SCREENSHOT if os.environ.get("DETECTOR_SAVE_SCREENSHOT") == "1" else tmp_path / "page.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target)) and target.stat().st_size > 0


def test_page_plays_the_annotated_video(served, browser, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    from detector.video import VideoFile

    clip = tmp_path / "clip.mp4"
    video = VideoFile(clip, 10.0, (160, 128))
    for index in range(10):
        frame = np.full((128, 160, 3), 40, np.uint8)
        frame[30:80, 10 + 8 * index : 70 + 8 * index] = 210
        video.write(frame, index)
    video.release()
    base, _ = served
    browser.get(f"{base}/")
    browser.find_element("id", "file").send_keys(str(clip))
    WebDriverWait(browser, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state")
                                     in ("done", "error"))
    assert browser.find_element("tag name", "body").get_attribute("data-state") == "done", \
        browser.find_element("id", "status").text
    assert browser.find_element("id", "progress").get_attribute("value") == "1"
    # the browser decodes the H.264 mp4: its metadata loads and it has the clip's size and about its duration
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.getElementById('video').readyState") >= 1)
    width, height, duration = browser.execute_script(
        "const v = document.getElementById('video'); return [v.videoWidth, v.videoHeight, v.duration];")
    assert (width, height) == (160, 128) and duration == pytest.approx(1.0, abs=0.15)
