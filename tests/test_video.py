"""Sources, batched threaded prediction and `run_detection` outputs, with a fake detector (no model needed)."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector import video
from detector.structures import Detections, DetectorError
from detector import sources
from detector.video import open_source, predict_frames, run_detection

WIDTH, HEIGHT, FPS, FRAMES = 64, 48, 10.0, 12
# The fake detector's one box per frame: the central half-width, upper-middle band of the frame.
BOX = [16.0, 12.0, 48.0, 24.0]


class FakeDetector:
    """One box per frame at BOX; its score is the frame's mean brightness / 255, so results reveal frame order."""

    class_names = ["car", "truck"]

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.batch_sizes: list[int] = []
        self.fail_on_call = fail_on_call

    def predict_batch(self, images, score_thresh=None, classes=None, max_det=None) -> list[Detections]:
        self.batch_sizes.append(len(images))
        if self.fail_on_call == len(self.batch_sizes):
            raise RuntimeError("model exploded")
        return [
            Detections(torch.tensor([BOX]), torch.tensor([image.mean() / 255.0]), torch.tensor([1]), self.class_names)
            for image in images
        ]


def brightness(index: int) -> int:
    return 20 + 15 * index  # frame k is a flat grey of this value: 20, 35, ..., 185


def write_video(path: Path, frames: int = FRAMES, fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (WIDTH, HEIGHT))
    for index in range(frames):
        writer.write(np.full((HEIGHT, WIDTH, 3), brightness(index), np.uint8))
    writer.release()
    return path


def write_image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((HEIGHT, WIDTH, 3), value, np.uint8))
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps, size


def corrupt_mjpeg_frames(path: Path, which: list[int]) -> Path:
    """Zero the whole JPEG of the chosen frames of an MJPG avi, so exactly those frames fail to decode.

    In an avi each frame is a chunk: b"00dc", its 4-byte little-endian size, then the JPEG (which starts FF D8).
    """
    data = bytearray(path.read_bytes())
    starts = [i for i in range(8, len(data) - 1) if data[i - 8:i - 4] == b"00dc" and data[i:i + 2] == b"\xff\xd8"]
    for index in which:
        size = int.from_bytes(data[starts[index] - 4:starts[index]], "little")
        data[starts[index]:starts[index] + size] = bytes(size)
    path.write_bytes(bytes(data))
    return path


def worker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("detector-")]


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.mp4")


def test_video_file_gives_annotated_mp4_json_and_csv(clip: Path, tmp_path: Path) -> None:
    fake = FakeDetector()
    summary = run_detection(fake, str(clip), out_dir=tmp_path / "out", batch_size=4)

    frames, fps, size = read_video(summary.annotated)
    assert summary.annotated == tmp_path / "out" / "clip.mp4"
    assert (len(frames), fps, size) == (FRAMES, FPS, (WIDTH, HEIGHT))
    # the box outline is drawn on the flat grey frame: its top edge differs from the untouched corner
    first = frames[0].astype(int)
    assert np.abs(first[12, 20:44] - brightness(0)).max() > 60
    assert np.abs(first[40, 2:10] - brightness(0)).max() < 10

    payload = json.loads(summary.json_path.read_text())
    assert payload["fps"] == FPS and payload["frame_size"] == [WIDTH, HEIGHT]
    assert [entry["frame"] for entry in payload["frames"]] == list(range(FRAMES))
    scores = [entry["detections"][0]["score"] for entry in payload["frames"]]
    assert scores == pytest.approx([brightness(k) / 255 for k in range(FRAMES)], abs=0.02)  # frame order kept
    assert payload["frames"][0]["detections"][0]["box"] == BOX

    rows = list(csv.reader(summary.csv_path.open()))
    assert rows[0] == ["frame_or_image", "class", "score", "x1", "y1", "x2", "y2"]
    assert [row[0] for row in rows[1:]] == [str(k) for k in range(FRAMES)]
    assert rows[1][1] == "car" and [float(v) for v in rows[1][3:]] == BOX

    assert (summary.frames, summary.skipped_frames, summary.detections) == (FRAMES, 0, FRAMES)
    assert summary.mean_detections == 1.0 and summary.fps > 0 and summary.model_fps > 0
    assert fake.batch_sizes == [4, 4, 4]
    assert worker_threads() == []


@pytest.mark.parametrize("batch_size, expected", [(1, [1] * FRAMES), (5, [5, 5, 2]), (16, [FRAMES])])
def test_predict_batch_gets_batches_of_batch_size(clip: Path, batch_size: int, expected: list[int]) -> None:
    fake = FakeDetector()
    results = list(predict_frames(fake, str(clip), batch_size=batch_size))
    assert fake.batch_sizes == expected
    assert [r.index for r in results] == list(range(FRAMES))
    assert results[3].name == "frame_000003" and results[3].image.shape == (HEIGHT, WIDTH, 3)


def test_api_predict_video_uses_predict_frames(clip: Path) -> None:
    # detector.api imports the whole model; skip only while a stage module it needs is not written yet
    Detector = pytest.importorskip("detector.api").Detector
    fake = FakeDetector()
    results = list(Detector.predict_video(fake, str(clip), batch_size=3))  # the API method on any predictor
    assert [r.index for r in results] == list(range(FRAMES)) and fake.batch_sizes == [3, 3, 3, 3]
    assert all(len(r.detections) == 1 for r in results)


def test_batch_size_must_be_positive(clip: Path) -> None:
    with pytest.raises(DetectorError, match="batch_size"):
        next(predict_frames(FakeDetector(), str(clip), batch_size=0))


def test_undecodable_video_frame_is_skipped_and_counted(tmp_path: Path) -> None:
    avi = corrupt_mjpeg_frames(write_video(tmp_path / "damaged.avi", fourcc="MJPG"), which=[4])
    summary = run_detection(FakeDetector(), str(avi), out_dir=tmp_path / "out")
    payload = json.loads(summary.json_path.read_text())
    assert [entry["frame"] for entry in payload["frames"]] == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    assert (summary.frames, summary.skipped_frames) == (11, 1)
    # the mp4 keeps the source's timeline: the undecodable frame 4 holds frame 3's picture, frame n stays frame n
    frames = read_video(summary.annotated)[0]
    assert len(frames) == 12
    means = [float(frame[40:, :].mean()) for frame in frames]  # below the drawn box
    assert all(abs(means[i] - brightness(j)) < 6 for i, j in ((3, 3), (4, 3), (5, 5), (11, 11)))


def test_a_stalled_source_fails_with_one_sentence(monkeypatch) -> None:
    """A stream that stops delivering frames used to block the reader queue forever."""
    release = threading.Event()

    def stalled():
        yield "first"
        release.wait(30)  # a dead stream: nothing arrives until the test lets the thread finish
        yield "late"

    monkeypatch.setenv("DETECTOR_STALL_S", "0.3")
    prefetcher = video._Prefetcher(stalled(), maxsize=2, name="the stream rtsp://camera/1")
    items = iter(prefetcher)
    assert next(items) == "first"
    started = time.perf_counter()
    with pytest.raises(DetectorError, match=r"the stream rtsp://camera/1 stalled: no frame for 0.3 s"):
        next(items)
    assert time.perf_counter() - started < 5
    release.set()
    prefetcher.close()
    assert worker_threads() == []


def test_an_absurd_reported_frame_rate_is_treated_as_unknown(clip: Path, monkeypatch) -> None:
    """RTSP sources report their 90 kHz clock as the frame rate; the mp4 must not be written at 90000 fps."""
    real = cv2.VideoCapture

    class ClockRate:
        def __init__(self, *args):
            self.capture = real(*args)

        def get(self, prop):
            return 90000.0 if prop == cv2.CAP_PROP_FPS else self.capture.get(prop)

        def __getattr__(self, name):
            return getattr(self.capture, name)

    monkeypatch.setattr(sources.cv2, "VideoCapture", ClockRate)
    with pytest.warns(UserWarning, match="reports 90000 frames per second; treating its rate as unknown"):
        source = open_source(str(clip))
    assert source.fps is None
    source.close()


def test_folder_with_a_corrupt_image_skips_and_counts_it(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for name, value in [("a.png", 50), ("c.jpg", 100), ("d.png", 150)]:
        write_image(folder / name, value)
    (folder / "b.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("not an image, not counted")

    summary = run_detection(FakeDetector(), str(folder), out_dir=tmp_path / "out")
    payload = json.loads(summary.json_path.read_text())
    assert [entry["image"] for entry in payload["images"]] == ["a.png", "c.jpg", "d.png"]
    assert (summary.frames, summary.skipped_frames, summary.detections) == (3, 1, 3)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.*g")) == ["a.png", "c.jpg", "d.png"]
    assert summary.annotated == tmp_path / "out"
    rows = list(csv.reader(summary.csv_path.open()))
    assert [row[0] for row in rows[1:]] == ["a.png", "c.jpg", "d.png"]


def test_glob_keeps_subfolder_names_apart(tmp_path: Path) -> None:
    for sub in ("left", "right"):
        write_image(tmp_path / "cams" / sub / "000.png")
    write_image(tmp_path / "cams" / "left" / "skip.bmp")
    source = open_source(str(tmp_path / "cams" / "*" / "*.png"))
    assert source.kind == "glob" and source.stem == "cams"

    summary = run_detection(FakeDetector(), str(tmp_path / "cams" / "*" / "*.png"), out_dir=tmp_path / "out")
    assert summary.frames == 2
    assert (tmp_path / "out" / "left" / "000.png").is_file() and (tmp_path / "out" / "right" / "000.png").is_file()


def test_single_image_is_annotated_under_its_own_name(tmp_path: Path) -> None:
    image = write_image(tmp_path / "street.jpg")
    summary = run_detection(FakeDetector(), str(image), out_dir=tmp_path / "out")
    annotated = cv2.imread(str(tmp_path / "out" / "street.jpg"))
    assert annotated.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(annotated[12, 20:44].astype(int) - 100).max() > 60  # the box's top edge
    payload = json.loads(summary.json_path.read_text())
    assert payload["images"][0]["image"] == "street.jpg" and payload["images"][0]["detections"][0]["box"] == BOX


def test_corrupt_single_image_is_an_error(tmp_path: Path) -> None:
    image = tmp_path / "broken.jpg"
    image.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DetectorError, match="broken.jpg"):
        run_detection(FakeDetector(), str(image), out_dir=tmp_path / "out")


def test_source_kinds_and_video_properties(clip: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "dir" / "x.png")
    assert open_source(str(tmp_path / "dir")).kind == "folder"
    assert open_source(str(tmp_path / "dir" / "x.png")).kind == "image"
    source = open_source(str(clip))
    assert (source.kind, source.stem, source.fps) == ("video", "clip", FPS)
    assert (source.frame_size, source.frame_count, source.total) == ((WIDTH, HEIGHT), FRAMES, FRAMES)
    source.close()


def garbage_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(b"\x00garbage" * 200)
    return path


def all_frames_corrupt(tmp_path: Path) -> Path:
    return corrupt_mjpeg_frames(write_video(tmp_path / "dead.avi", fourcc="MJPG"), which=list(range(FRAMES)))


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp: str(tmp / "missing.mp4"), "does not exist"),
        (lambda tmp: str((tmp / "empty").mkdir() or tmp / "empty"), "contains no images"),
        (lambda tmp: str(tmp / "nothing" / "*.jpg"), "contains no images"),
        (lambda tmp: str(garbage_mp4(tmp)), "cannot open the video file"),
        (lambda tmp: str(all_frames_corrupt(tmp)), "no decodable frames"),
        (lambda tmp: str((tmp / "notes.txt").write_text("x") and tmp / "notes.txt"), "neither an image"),
        (lambda tmp: "rtsp://127.0.0.1:1/live", "cannot open the stream rtsp://127.0.0.1:1/live"),
        (lambda tmp: "63", "cannot open the webcam 63"),
    ],
    ids=["missing", "empty-folder", "empty-glob", "garbage-mp4", "zero-frames", "unknown-type", "stream", "webcam"],
)
def test_unusable_sources_fail_with_one_sentence(tmp_path: Path, make_source, message: str) -> None:
    source = make_source(tmp_path)
    with pytest.raises(DetectorError, match=message) as caught:
        run_detection(FakeDetector(), source, out_dir=tmp_path / "out")
    assert source in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()  # a failed source leaves no output folder behind


def test_existing_non_empty_out_dir_is_never_overwritten(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DetectorError, match="not empty"):
        run_detection(FakeDetector(), str(clip), out_dir=out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_detection(FakeDetector(), str(clip), out_dir=empty).frames == FRAMES  # an empty folder is fine


def test_out_dir_that_cannot_be_created_is_named(clip: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder would have to be")
    with pytest.raises(DetectorError, match=f"cannot create the output folder {blocker / 'out'}"):
        run_detection(FakeDetector(), str(clip), out_dir=blocker / "out")
    with pytest.raises(DetectorError, match=f"{blocker} is a file"):
        run_detection(FakeDetector(), str(clip), out_dir=blocker)


def test_unwritable_out_dir_is_named(clip: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes")
        with pytest.raises(DetectorError, match=f"{locked} is not writable"):
            run_detection(FakeDetector(), str(clip), out_dir=locked)
        with pytest.raises(DetectorError, match=f"cannot create the output folder {locked / 'sub'}"):
            run_detection(FakeDetector(), str(clip), out_dir=locked / "sub")
    finally:
        locked.chmod(0o700)


def test_out_dir_without_write_permission_is_named(clip: Path, tmp_path: Path, monkeypatch) -> None:
    # the same check as above, but also where the tests run as root (root passes every permission check)
    monkeypatch.setattr(video.os, "access", lambda path, mode: False)
    with pytest.raises(DetectorError, match=f"{tmp_path / 'out'} is not writable"):
        run_detection(FakeDetector(), str(clip), out_dir=tmp_path / "out")


def test_default_out_dir_is_a_new_run_folder(clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = run_detection(FakeDetector(), str(clip))
    second = run_detection(FakeDetector(), str(clip))
    assert first.out_dir == Path("runs/detect/clip") and second.out_dir == Path("runs/detect/clip-2")
    assert (tmp_path / "runs/detect/clip-2/clip.mp4").is_file()


def test_threads_stop_when_the_consumer_stops_early(clip: Path) -> None:
    fake = FakeDetector()
    results = predict_frames(fake, str(clip), batch_size=2)
    assert next(results).index == 0
    results.close()
    assert worker_threads() == [] and fake.batch_sizes == [2]


def test_early_stop_waits_for_a_busy_reader(tmp_path: Path, monkeypatch) -> None:
    # a slow decoder keeps the reader busy when the consumer stops: closing must still join it
    for index in range(6):
        write_image(tmp_path / "images" / f"{index}.png")
    monkeypatch.setattr(sources, "load_image", lambda path: time.sleep(0.2) or cv2.imread(str(path))[:, :, ::-1])
    results = predict_frames(FakeDetector(), str(tmp_path / "images"), batch_size=1)
    assert next(results).name == "0.png"
    results.close()
    assert worker_threads() == []


def test_model_failure_propagates_and_stops_threads(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="model exploded"):
        run_detection(FakeDetector(fail_on_call=2), str(clip), out_dir=tmp_path / "out", batch_size=4)
    assert worker_threads() == []
    rows = list(csv.reader((tmp_path / "out" / "detections.csv").open()))
    assert len(rows) <= 1 + 4  # header plus at most the first batch; files are closed, not left half-open


def test_writer_failure_propagates_and_stops_threads(clip: Path, tmp_path: Path, monkeypatch) -> None:
    def broken_draw(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(video, "draw_detections", broken_draw)
    with pytest.raises(OSError, match="disk full"):
        run_detection(FakeDetector(), str(clip), out_dir=tmp_path / "out", batch_size=2)
    assert worker_threads() == []


def test_show_without_display_prints_one_note(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if video._display_available():
        pytest.skip("a display and a GUI build of OpenCV exist here")
    summary = run_detection(FakeDetector(), str(clip), out_dir=tmp_path / "out", show=True)
    assert capsys.readouterr().out.count("--show needs a display") == 1
    assert summary.frames == FRAMES


def test_summary_describe_and_to_dict(clip: Path, tmp_path: Path) -> None:
    summary = run_detection(FakeDetector(), str(clip), out_dir=tmp_path / "out")
    data = json.loads(json.dumps(summary.to_dict()))
    assert (data["frames"], data["skipped_frames"], data["detections"], data["mean_detections"]) == (12, 0, 12, 1.0)
    assert data["annotated"] == str(tmp_path / "out" / "clip.mp4")
    line = summary.describe()
    assert "\n" not in line and "12 frames (0 skipped), 12 detections (1.00 per frame)" in line


@pytest.mark.slow
def test_real_dashcam_clip(shared_data: Path, tmp_path: Path) -> None:
    dashcam = shared_data / "videos" / "solidWhiteRight.mp4"
    summary = run_detection(FakeDetector(), str(dashcam), out_dir=tmp_path / "out", batch_size=8)
    frames, fps, size = read_video(summary.annotated)
    assert (len(frames), fps, size) == (221, 25.0, (960, 540))
    payload = json.loads(summary.json_path.read_text())
    assert [entry["frame"] for entry in payload["frames"]] == list(range(221))
    assert (summary.frames, summary.skipped_frames) == (221, 0)


def test_annotated_video_is_h264_for_browsers(clip: Path, tmp_path: Path) -> None:
    """mp4v (MPEG-4 part 2) does not play in browsers; the annotated mp4 is H.264 in yuv420p."""
    import av

    summary = run_detection(FakeDetector(), str(clip), out_dir=tmp_path / "out")
    with av.open(str(summary.annotated)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert sum(1 for _ in container.decode(stream)) == FRAMES
