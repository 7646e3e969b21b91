"""The HTTP service (detector.serve): every endpoint and every error, with a fake predictor and, once, the real one."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from detector.errors import DetectorError
from detector.serve.app import create_app
from detector.serve.predictor import load_predictor
from detector.serve.settings import Settings, add_arguments, main, settings_from_args
from detector.video import VideoFile

CLASSES = ["car", "truck"]


class FakeDetections:
    """Numpy detections, as the ONNX predictor returns them: scores 0.9, 0.7, 0.5, 0.3 for labels 1, 2, 1, 2."""

    def __init__(self, height: int, width: int) -> None:
        self.boxes = np.array([[0, 0, width / 2, height / 2], [1, 1, width - 1, height - 1],
                               [2, 3, 10, 12], [width / 4, height / 4, width / 2, height / 2]], np.float32)
        self.scores = np.array([0.9, 0.7, 0.5, 0.3], np.float32)
        self.labels = np.array([1, 2, 1, 2], np.int64)

    def __len__(self) -> int:
        return len(self.scores)

    def to_list(self) -> list[dict]:
        return []


class FakePredictor:
    """Records the size of every batch; optionally slow, blocked until released, or failing once."""

    class_names = CLASSES

    def __init__(self, delay: float = 0.0, fail_once: bool = False, block: bool = False) -> None:
        self.delay, self.fail_once = delay, fail_once
        self.batch_sizes: list[int] = []
        self.started, self.release = threading.Event(), threading.Event()
        if not block:
            self.release.set()

    def predict_batch(self, images, score_thresh=None, classes=None, max_det=None):
        self.batch_sizes.append(len(images))
        self.started.set()
        self.release.wait(30)
        time.sleep(self.delay)
        if self.fail_once:
            self.fail_once = False
            raise RuntimeError("the fake model broke")
        return [FakeDetections(*image.shape[:2]) for image in images]


def jpeg(height: int = 48, width: int = 64) -> bytes:
    image = np.zeros((height, width, 3), np.uint8)
    image[8:24, 8:40] = (200, 40, 40)
    return cv2.imencode(".jpg", image)[1].tobytes()


def client(predictor=None, **settings) -> TestClient:
    return TestClient(create_app(predictor or FakePredictor(), Settings(model_name="fake.onnx", **settings)))


def in_thread(function, *args, **kwargs) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(function(*args, **kwargs)))
    thread.start()
    return thread, out


def test_detect_multipart_and_raw_body() -> None:
    with client() as c:
        for response in (c.post("/v1/detect", files={"file": ("a.jpg", jpeg(), "image/jpeg")}),
                         c.post("/v1/detect", content=jpeg(), headers={"content-type": "image/jpeg"})):
            assert response.status_code == 200
            body = response.json()
            assert (body["model"], body["width"], body["height"]) == ("fake.onnx", 64, 48)
            assert [d["class"] for d in body["detections"]] == ["car", "truck", "car", "truck"]
            assert body["detections"][0] == {"box": [0.0, 0.0, 32.0, 24.0], "score": pytest.approx(0.9), "label": 1,
                                              "class": "car"}
            assert set(body["timing_ms"]) == {"queue", "model", "total"}
            assert body["timing_ms"]["total"] >= body["timing_ms"]["model"] >= 0


@pytest.mark.parametrize("query, expected", [
    ("score_thresh=0.6", [0.9, 0.7]),
    ("score_thresh=0.5", [0.9, 0.7, 0.5]),
    ("classes=truck", [0.7, 0.3]),
    ("classes=car,truck&max_det=3", [0.9, 0.7, 0.5]),
    ("max_det=1&classes=truck", [0.7]),
    ("score_thresh=1", []),
])
def test_detect_filters(query: str, expected: list[float]) -> None:
    with client() as c:
        response = c.post(f"/v1/detect?{query}", content=jpeg())
    assert [d["score"] for d in response.json()["detections"]] == pytest.approx(expected)


@pytest.mark.parametrize("query, words", [
    ("classes=car,bus,plane", ["bus", "plane"]),
    ("score_thresh=1.5", ["score_thresh"]),
    ("score_thresh=abc", ["score_thresh"]),
    ("max_det=0", ["max_det"]),
])
def test_bad_options_are_400_naming_them(query: str, words: list[str]) -> None:
    with client() as c:
        response = c.post(f"/v1/detect?{query}", content=jpeg())
    assert response.status_code == 400
    assert list(response.json()) == ["error"] and all(word in response.json()["error"] for word in words)


def test_annotated_returns_a_jpeg_of_the_same_size() -> None:
    with client() as c:
        response = c.post("/v1/detect?annotated=true", files={"file": ("a.png", jpeg(50, 70), "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    decoded = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (50, 70, 3) and response.headers["x-detections"] == "4"


@pytest.mark.parametrize("kwargs", [
    {"content": b"this is not an image"},
    {"content": b""},
    {"files": {"other": ("a.jpg", jpeg(), "image/jpeg")}},
    {"files": {"file": ("a.jpg", b"\xff\xd8 broken jpeg", "image/jpeg")}},
])
def test_undecodable_or_missing_image_is_400(kwargs: dict) -> None:
    with client() as c:
        response = c.post("/v1/detect", **kwargs)
    assert response.status_code == 400 and isinstance(response.json()["error"], str)


def test_body_and_pixel_limits_are_413() -> None:
    with client(max_body_mb=0.001) as c:  # about 1 KB
        big = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[1].tobytes()
        response = c.post("/v1/detect", content=big)
        assert response.status_code == 413 and "--max-body-mb" in response.json()["error"]
        assert c.post("/v1/detect", files={"file": ("a.png", big, "image/png")}).status_code == 413
        chunked = c.post("/v1/detect", content=iter([big[:512], big[512:]]))  # no Content-Length: counted as it comes
        assert "content-length" not in chunked.request.headers and chunked.status_code == 413
    with client(max_pixels=1000) as c:
        response = c.post("/v1/detect", content=jpeg(48, 64))
        assert response.status_code == 413 and "--max-pixels" in response.json()["error"]
        assert c.post("/v1/detect", content=jpeg(20, 40)).status_code == 200


def test_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with client(api_key="s3cret") as c:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = c.post("/v1/detect", content=jpeg(), headers=headers)
            assert response.status_code == 401 and "API key" in response.json()["error"]
        assert c.get("/metrics").status_code == 401 and c.get("/v1/videos/x").status_code == 401
        assert c.post("/v1/detect", content=jpeg(), headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/detect", content=jpeg(), headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").json()["auth_required"] is True
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200  # no data in them
        assert c.get("/docs-static/swagger-ui.css").status_code == 200
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.setenv("DETECTOR_API_KEY", "from-env")
    assert settings_from_args(parser.parse_args(["m.onnx"])).api_key == "from-env"
    assert settings_from_args(parser.parse_args(["m.onnx", "--api-key", "flag"])).api_key == "flag"
    monkeypatch.delenv("DETECTOR_API_KEY")
    settings = settings_from_args(parser.parse_args(["runs/x/best.pt"]))
    assert (settings.api_key, settings.host, settings.model_name, settings.max_batch) == (None, "127.0.0.1", "best.pt", 4)


def test_full_queue_is_429_with_retry_after() -> None:
    predictor = FakePredictor(block=True)
    with client(predictor, queue_size=1, max_batch=1, max_wait_ms=1) as c:
        first, first_out = in_thread(c.post, "/v1/detect", content=jpeg())
        assert predictor.started.wait(10)  # the first request is in the model, blocked
        second, second_out = in_thread(c.post, "/v1/detect", content=jpeg())
        deadline = time.time() + 10
        while c.app.state.worker.depth < 1 and time.time() < deadline:
            time.sleep(0.01)  # the second one waits in the queue of one
        response = c.post("/v1/detect", content=jpeg())
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert "queue is full" in response.json()["error"]
        predictor.release.set()
        first.join(10), second.join(10)
        assert first_out[0].status_code == second_out[0].status_code == 200
        assert 'detector_http_requests_total{endpoint="/v1/detect",status="429"} 1.0' in c.get("/metrics").text


def test_predictor_failure_is_500_and_the_next_request_succeeds() -> None:
    with client(FakePredictor(fail_once=True)) as c:
        response = c.post("/v1/detect", content=jpeg())
        assert response.status_code == 500 and "the fake model broke" in response.json()["error"]
        assert c.post("/v1/detect", content=jpeg()).status_code == 200


def test_concurrent_requests_are_micro_batched() -> None:
    predictor = FakePredictor(delay=0.2)
    with client(predictor, max_batch=4, max_wait_ms=50) as c:
        threads = [in_thread(c.post, "/v1/detect", content=jpeg()) for _ in range(10)]
        for thread, _ in threads:
            thread.join(30)
        assert all(out[0].status_code == 200 for _, out in threads)
        metrics = c.get("/metrics").text
    assert sum(predictor.batch_sizes) == 10 and max(predictor.batch_sizes) <= 4
    assert max(predictor.batch_sizes) > 1 and len(predictor.batch_sizes) < 10
    assert f"detector_batch_size_count {float(len(predictor.batch_sizes))}" in metrics
    assert "detector_batch_size_sum 10.0" in metrics


def test_health_metrics_and_docs() -> None:
    with client() as c:
        assert c.get("/healthz").json() == {"status": "ok", "model": "fake.onnx", "classes": CLASSES,
                                            "auth_required": False}
        c.post("/v1/detect", content=jpeg())
        c.post("/v1/detect", content=b"nope")
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        for line in ('detector_http_requests_total{endpoint="/v1/detect",status="200"} 1.0',
                     'detector_http_requests_total{endpoint="/v1/detect",status="400"} 1.0',
                     'detector_http_request_seconds_count{endpoint="/v1/detect"} 2.0',
                     "detector_queue_depth 0.0", "detector_batch_size_count 1.0", "detector_model_seconds_count 1.0"):
            assert line in metrics.text
        schema = c.get("/openapi.json").json()
        assert {"/v1/detect", "/v1/videos", "/v1/videos/{job_id}", "/healthz", "/metrics"} <= set(schema["paths"])
        page = c.get("/docs")  # Swagger UI from this server, not a CDN: the page works offline
        assert page.status_code == 200 and "/docs-static/swagger-ui-bundle.js" in page.text
        assert "cdn" not in page.text.lower()
        script = c.get("/docs-static/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        assert c.get("/no/such/page").json() == {"error": "no such endpoint: GET /no/such/page"}
        assert 'id="detections"' in c.get("/").text


def write_video(path: Path, frames: int = 12, size: tuple[int, int] = (96, 64)) -> Path:
    video = VideoFile(path, 10.0, size)
    for index in range(frames):
        frame = np.full((size[1], size[0], 3), 30, np.uint8)
        frame[10:30, 5 + 4 * index : 25 + 4 * index] = 220  # a moving bright block
        video.write(frame, index)
    video.release()
    return path


def wait_for_job(c: TestClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = c.get(f"/v1/videos/{job_id}").json()
        assert 0 <= status["progress"] <= 1
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"video job {job_id} did not finish in {timeout} s")


def test_video_job_end_to_end(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4").read_bytes()
    with client(max_batch=4) as c:
        response = c.post("/v1/videos?score_thresh=0.6", files={"file": ("clip.mp4", clip, "video/mp4")})
        assert response.status_code == 202
        job_id = response.json()["id"]
        status = wait_for_job(c, job_id)
        assert status["status"] == "done" and status["error"] is None, status
        assert (status["frames_done"], status["frames_total"], status["progress"]) == (12, 12, 1.0)
        assert [frame["frame"] for frame in status["frames"]] == list(range(12))
        assert all([d["score"] for d in frame["detections"]] == pytest.approx([0.9, 0.7]) for frame in status["frames"])
        video = c.get(status["video_url"])
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        raw_id = c.post("/v1/videos", content=clip).json()["id"]  # the raw body works too
        assert wait_for_job(c, raw_id)["status"] == "done"
    (tmp_path / "annotated.mp4").write_bytes(video.content)
    capture = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 12 and (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (96, 64)
    capture.release()
    import av

    with av.open(str(tmp_path / "annotated.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"  # what browsers play


def test_video_errors_and_eviction(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", frames=3).read_bytes()
    with client(max_jobs=1, max_video_mb=0.0001) as c:
        assert c.post("/v1/videos", content=clip).status_code == 413
    with client(max_jobs=1) as c:
        assert c.post("/v1/videos", content=b"not a video at all").status_code == 400
        assert c.get("/v1/videos/0123abc").status_code == 404
        assert c.get("/v1/videos/0123abc/video").json()["error"].startswith("no video job 0123abc")
        first = c.post("/v1/videos", content=clip).json()["id"]
        wait_for_job(c, first)
        folder = c.app.state.jobs.root / first
        assert (folder / "annotated.mp4").is_file() and not (folder / "upload.mp4").exists()
        second = c.post("/v1/videos", content=clip).json()["id"]
        assert wait_for_job(c, second)["status"] == "done"
        assert c.get(f"/v1/videos/{first}").status_code == 404 and not folder.exists()  # evicted with its files
        root = c.app.state.jobs.root
    assert not root.exists()  # shutdown deletes every job's files


def test_failing_predictor_fails_the_video_job_only(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", frames=3).read_bytes()
    with client(FakePredictor(fail_once=True)) as c:
        status = wait_for_job(c, c.post("/v1/videos", content=clip).json()["id"])
        assert status["status"] == "failed" and "the fake model broke" in status["error"]
        assert c.get(f"/v1/videos/{status['id']}/video").status_code == 409
        assert c.post("/v1/detect", content=jpeg()).status_code == 200


def test_load_predictor_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DetectorError, match="no such file"):
        load_predictor(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorError, match="junk.pt"):
        load_predictor(tmp_path / "junk.pt")
    assert main([str(tmp_path / "missing.onnx")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot serve")


def test_real_checkpoint_end_to_end(tiny_checkpoint: Path) -> None:
    predictor = load_predictor(tiny_checkpoint)
    image = np.zeros((128, 160, 3), np.uint8)
    image[40:90, 30:120] = (200, 60, 60)
    encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    with TestClient(create_app(predictor, Settings(model_name=tiny_checkpoint.name))) as c:
        assert c.get("/healthz").json()["classes"] == predictor.class_names
        body = c.post("/v1/detect?score_thresh=0", files={"file": ("s.png", encoded, "image/png")}).json()
        annotated = c.post("/v1/detect?annotated=true", content=encoded)
    expected = predictor.predict(image)
    order = np.argsort(-expected.scores.numpy(), kind="stable")  # the service lists the best first
    assert len(body["detections"]) == len(expected) > 0
    np.testing.assert_allclose([d["box"] for d in body["detections"]], expected.boxes.numpy()[order], atol=0.01)
    np.testing.assert_allclose([d["score"] for d in body["detections"]], expected.scores.numpy()[order], atol=1e-6)
    assert all(d["class"] in predictor.class_names for d in body["detections"])
    assert cv2.imdecode(np.frombuffer(annotated.content, np.uint8), cv2.IMREAD_COLOR).shape == (128, 160, 3)


ONNX_SERVICE = """
import sys
import cv2, numpy as np
from fastapi.testclient import TestClient
from detector.serve.app import create_app
from detector.serve.predictor import load_predictor
from detector.serve.settings import Settings
with TestClient(create_app(load_predictor(sys.argv[1]), Settings(model_name="tiny.onnx"))) as c:
    image = cv2.imencode(".png", np.full((128, 160, 3), 90, np.uint8))[1].tobytes()
    response = c.post("/v1/detect", content=image)
assert response.status_code == 200 and response.json()["model"] == "tiny.onnx", response.text
assert "torch" not in sys.modules, "the service on an ONNX model imported torch"
print("ok")
"""


def test_onnx_model_is_served_without_torch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    export = pytest.importorskip("detector.export")
    onnx = export.export_onnx(tiny_checkpoint, tmp_path / "tiny.onnx")
    run = subprocess.run([sys.executable, "-c", ONNX_SERVICE, str(onnx)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
