"""`detector track`: detect, track, count and measure speed on a video (or any source `detect` takes).

One detection pass per frame (batched, frames read ahead as in `detect`), ByteTrack on every frame, then the
counters and the speed estimator; drawing and writing run in a background thread. Outputs in the run folder:
the annotated video (IDs, trails, lines with their counts, zones with their occupancy, speeds), ``tracks.json``
(per frame: track_id, class, score, box, speed), ``tracks.csv``, ``tracks_mot.txt`` (MOTChallenge) and
``counts.json`` (totals per line, direction and class; zone entries, exits, occupancy and dwell; every event with
its frame and time). Frame n of the video, the JSON and the CSV is source frame n; the MOT file counts from 1.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from detector.config import TrackConfig
from detector.runs import new_run_dir, prepare_out_dir
from detector.structures import DetectorError
from detector.track.bytetrack import ByteTracker
from detector.track.counting import CountEvent, LineCounter, ZoneCounter, bottom_centre, check_polygon
from detector.track.mot import MotBox, write_mot
from detector.track.speed import SpeedEstimator, read_homography
from detector.video import DEFAULT_FPS, FramePredictor, VideoFile, open_source, predict_frames, write_results
from detector.visualize import PALETTE, draw_detections, save_image

__all__ = ["TrackSummary", "check_track_options", "parse_line", "parse_zone", "run_tracking"]

_NAMED = re.compile(r"^(?P<numbers>[^:]+)(:(?P<name>.+))?$")


def _numbers(text: str, option: str) -> tuple[list[float], str | None]:
    match = _NAMED.match(text.strip())
    try:
        values = [float(v) for v in match.group("numbers").split(",")] if match else []
    except ValueError:
        values = []
    if not values or not all(np.isfinite(values)):
        raise DetectorError(f"{option} {text!r}: expected comma-separated pixel coordinates, optionally ':name'")
    return values, match.group("name")


def parse_line(text: str, index: int) -> tuple[str, tuple[float, float], tuple[float, float]]:
    """``x1,y1,x2,y2[:name]`` -> (name, start, end)."""
    values, name = _numbers(text, "--line")
    if len(values) != 4:
        raise DetectorError(f"--line {text!r}: expected x1,y1,x2,y2 (4 numbers), got {len(values)}")
    return name or f"line{index + 1}", (values[0], values[1]), (values[2], values[3])


def parse_zone(text: str, index: int) -> tuple[str, np.ndarray]:
    """``x1,y1,x2,y2,x3,y3,...[:name]`` -> (name, (P, 2) points)."""
    values, name = _numbers(text, "--zone")
    if len(values) % 2:
        raise DetectorError(f"--zone {text!r}: expected x,y pairs, got an odd count ({len(values)})")
    return name or f"zone{index + 1}", np.asarray(values, np.float64).reshape(-1, 2)


def check_track_options(lines: Sequence[str], zones: Sequence[str], homography: str | Path | None) -> tuple:
    """Parse and check the lines, zones and homography file before anything is loaded: (line specs, zone specs,
    (3, 3) homography or None). Whether they fit the frame is checked once the source is open."""
    line_specs = [parse_line(text, i) for i, text in enumerate(lines)]
    zone_specs = [(name, check_polygon(name, points)) for name, points in
                  (parse_zone(text, i) for i, text in enumerate(zones))]
    return line_specs, zone_specs, read_homography(homography) if homography else None


def _check_inside(name: str, points: np.ndarray, size: tuple[int, int] | None) -> None:
    if size is None:
        return
    width, height = size
    outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
    if outside.any():
        x, y = points[int(np.argmax(outside))]
        raise DetectorError(f"{name!r} has the point ({x:g}, {y:g}) outside the {width}x{height} frame")


@dataclass
class TrackSummary:
    """What `run_tracking` did: frames, tracks, counts, times (tracker time apart from the model's) and outputs."""

    source: str
    frames: int
    skipped_frames: int
    tracks: int
    counts: dict[str, Any]
    seconds: float
    model_seconds: float
    tracker_seconds: float
    out_dir: Path
    annotated: Path
    json_path: Path
    csv_path: Path
    mot_path: Path
    counts_path: Path

    def describe(self) -> str:
        fps = self.frames / self.seconds if self.seconds else 0.0
        share = self.tracker_seconds / self.model_seconds if self.model_seconds else 0.0
        lines = [f"{self.source}: {self.frames} frames ({self.skipped_frames} skipped), {self.tracks} tracks, "
                 f"{fps:.1f} FPS end to end; tracker {1000 * self.tracker_seconds / max(self.frames, 1):.2f} ms per "
                 f"frame ({100 * share:.1f}% of the model's time)"]
        for name, line in self.counts.get("lines", {}).items():
            lines.append(f"line {name}: {line['total']} crossings (left {line['left']}, right {line['right']})")
        for name, zone in self.counts.get("zones", {}).items():
            lines.append(f"zone {name}: {zone['entries']} entries, {zone['exits']} exits, max occupancy "
                         f"{zone['max_occupancy']}")
        return "\n".join(lines + [f"outputs in {self.out_dir}"])

    def to_dict(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}


class _TrackWriter:
    """Draws each frame with its tracks, lines and zones and writes the video / images, JSON and CSV rows."""

    def __init__(self, source: Any, out_dir: Path, class_names: list[str], lines: list[LineCounter],
                 zones: list[ZoneCounter], trail: int) -> None:
        self.source, self.out_dir, self.class_names = source, out_dir, class_names
        self.lines, self.zones, self.trail = lines, zones, trail
        self.video_path = out_dir / f"{source.stem}.mp4" if source.is_video else out_dir
        self.video: VideoFile | None = None
        self.display = None  # no window while tracking
        self.frames: list[dict] = []
        self.mot: list[MotBox] = []
        self._trails: dict[int, deque] = defaultdict(lambda: deque(maxlen=trail))
        self._csv_file = (out_dir / "tracks.csv").open("w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["frame", "track_id", "class", "score", "x1", "y1", "x2", "y2", "speed_kmh"])

    def write(self, item: tuple[Any, list[dict], dict[str, Any]]) -> None:
        result, tracks, counts = item
        self.frames.append({"frame": result.index, "name": result.name, "tracks": tracks})
        for t in tracks:
            speed = "" if t["speed_kmh"] is None else round(t["speed_kmh"], 2)
            self._csv.writerow([result.index, t["track_id"], t["class"], t["score"], *t["box"], speed])
            self.mot.append(MotBox(result.index + 1, t["track_id"], tuple(t["box"]), t["score"]))
            self._trails[t["track_id"]].append(tuple(int(v) for v in bottom_centre(np.array(t["box"]))))
        image = self._draw(result.image, tracks, counts)
        if not self.source.is_video:
            name = result.name if Path(result.name).suffix else f"{result.name}.png"
            save_image(self.out_dir / name, image)
            return
        if self.video is None:
            size = self.source.frame_size or (image.shape[1], image.shape[0])
            self.video = VideoFile(self.video_path, self.source.fps or DEFAULT_FPS, size)
        self.video.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), result.index)  # skipped frames hold the last picture

    def _draw(self, image: np.ndarray, tracks: list[dict], counts: dict[str, Any]) -> np.ndarray:
        texts = [f"#{t['track_id']} {t['class']}" + (f" {t['speed_kmh']:.0f} km/h" if t["speed_kmh"] is not None else "")
                 for t in tracks]
        labels = [self.class_names.index(t["class"]) + 1 for t in tracks]
        canvas = draw_detections(image, np.array([t["box"] for t in tracks]).reshape(-1, 4), labels, self.class_names,
                                 texts=texts)
        for t in tracks:
            points = np.array(self._trails[t["track_id"]], np.int32).reshape(-1, 1, 2)
            cv2.polylines(canvas, [points], False, PALETTE[t["track_id"] % len(PALETTE)], 2)
        for line in self.lines:
            start, end = tuple(int(v) for v in line.start), tuple(int(v) for v in line.end)
            cv2.line(canvas, start, end, (255, 255, 255), 2)
            text = f"{line.name}: {counts['lines'][line.name]['left']} left, {counts['lines'][line.name]['right']} right"
            cv2.putText(canvas, text, (start[0], max(start[1] - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1)
        for zone in self.zones:
            cv2.polylines(canvas, [zone.polygon.astype(np.int32).reshape(-1, 1, 2)], True, (0, 255, 255), 2)
            x, y = zone.polygon.min(0).astype(int)
            cv2.putText(canvas, f"{zone.name}: {counts['zones'][zone.name]}", (int(x), max(int(y) - 6, 12)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1)
        return canvas

    def finish(self) -> None:
        if self.video is not None:
            self.video.release()
        self._csv_file.close()
        payload = {"source": self.source.location, "fps": self.source.fps, "frames": self.frames}
        (self.out_dir / "tracks.json").write_text(json.dumps(payload))
        write_mot(self.out_dir / "tracks_mot.txt", self.mot)


def _counts(lines: list[LineCounter], zones: list[ZoneCounter], events: list[CountEvent]) -> dict[str, Any]:
    return {
        "lines": {line.name: {"left": line.total("left"), "right": line.total("right"), "total": line.total(),
                              "per_class": line.counts, "points": [line.start.tolist(), line.end.tolist()]}
                  for line in lines},
        "zones": {zone.name: {"entries": zone.entries, "exits": zone.exits, "occupancy": zone.occupancy,
                              "max_occupancy": max(zone.occupancy, default=0),
                              "dwell_s": {str(k): round(v, 3) for k, v in zone.dwell_seconds().items()},
                              "points": zone.polygon.tolist()} for zone in zones},
        "events": [asdict(event) for event in events],
    }


class _FrameSteps:
    """Everything after the model for one frame: ByteTrack, the counters and the speeds; the tracker's own time."""

    def __init__(self, config: TrackConfig, class_names: list[str], lines: list[LineCounter],
                 zones: list[ZoneCounter], speed: SpeedEstimator | None, fps: float) -> None:
        self.tracker = ByteTracker.from_config(config)
        self.class_names, self.lines, self.zones, self.speed, self.fps = class_names, lines, zones, speed, fps
        self.events: list[CountEvent] = []
        self.seconds = 0.0

    def __call__(self, result: Any) -> tuple[Any, list[dict], dict[str, Any]]:
        """A FrameResult -> (it, its track rows, the running counts drawn on it)."""
        tick = time.perf_counter()
        while self.tracker.frame < result.index:  # frames the source could not decode: predict only
            self.tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
        found = result.detections
        tracks = self.tracker.update(found.boxes.numpy(), found.scores.numpy(), found.labels.numpy())
        self.seconds += time.perf_counter() - tick
        time_s = result.index / self.fps
        names = [self.class_names[t.label - 1] for t in tracks]
        points = bottom_centre(np.array([t.detection for t in tracks]).reshape(-1, 4))
        entries = [(t.track_id, name, point) for t, name, point in zip(tracks, names, points)]
        for counter in [*self.lines, *self.zones]:
            self.events += counter.update(result.index, time_s, entries)
        speeds = self.speed.update(time_s, [t.track_id for t in tracks], points) if self.speed else {}
        rows = [{"track_id": t.track_id, "class": name, "score": round(t.score, 4),
                 "box": [round(float(v), 2) for v in t.detection], "speed_kmh": speeds.get(t.track_id)}
                for t, name in zip(tracks, names)]
        counts = {"lines": {c.name: {"left": c.total("left"), "right": c.total("right")} for c in self.lines},
                  "zones": {z.name: z.occupancy[-1] for z in self.zones}}
        return result, rows, counts


def run_tracking(detector: FramePredictor, source: str | int | Path, out_dir: str | Path | None = None,
                 lines: Sequence[str] = (), zones: Sequence[str] = (), homography: str | Path | None = None,
                 config: TrackConfig | None = None, classes: Sequence[str] | None = None,
                 batch_size: int = 4) -> TrackSummary:
    """Track on ``source`` and write the outputs of the module doc; ``lines`` / ``zones`` as the command line
    takes them (``x1,y1,x2,y2[:name]``, ``x1,y1,...,xn,yn[:name]``), ``homography`` a JSON file (`speed`)."""
    config = config or TrackConfig()
    line_specs, zone_specs, matrix = check_track_options(lines, zones, homography)
    opened = open_source(source)
    try:
        fps = opened.fps or DEFAULT_FPS
        for name, start, end in line_specs:
            _check_inside(f"line {name}", np.array([start, end]), opened.frame_size)
        for name, points in zone_specs:
            _check_inside(f"zone {name}", points, opened.frame_size)
        line_counters = [LineCounter(name, start, end, config.line_tolerance, config.line_min_frames)
                         for name, start, end in line_specs]
        zone_counters = [ZoneCounter(name, points, fps) for name, points in zone_specs]
        speed = SpeedEstimator(matrix, config.speed_window_s) if matrix is not None else None
        step = _FrameSteps(config, list(detector.class_names), line_counters, zone_counters, speed, fps)
        out = new_run_dir("runs/track", opened.stem) if out_dir is None else prepare_out_dir(out_dir)
        writer = _TrackWriter(opened, out, list(detector.class_names), line_counters, zone_counters, config.trail)
        started = time.perf_counter()
        results = predict_frames(detector, opened, batch_size, score_thresh=config.low_thresh, classes=classes)
        model_seconds = write_results(writer, results, opened, batch_size, step)
        summary_counts = _counts(line_counters, zone_counters, step.events)
        counts_path = out / "counts.json"
        counts_path.write_text(json.dumps({"source": opened.location, "fps": fps, **summary_counts}, indent=1))
    finally:
        opened.close()
    return TrackSummary(opened.location, len(writer.frames), opened.skipped, step.tracker.next_id - 1, summary_counts,
                        time.perf_counter() - started, model_seconds, step.seconds, out, writer.video_path,
                        out / "tracks.json", out / "tracks.csv", out / "tracks_mot.txt", counts_path)

