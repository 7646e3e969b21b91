"""Tracking core (no model): Kalman steps by hand, ByteTrack identities, counting on scripted paths, MOT files,
HOTA on a hand-computed case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.structures import DetectorError
from detector.track import ByteTracker, KalmanFilter, LineCounter, MotBox, ZoneCounter, read_mot, write_mot
from detector.track.counting import bottom_centre
from detector.track.kalman import cxcywh_to_xyxy, xyxy_to_cxcywh
from detector.track.metrics import (clear_and_identity, count_errors, direction_count_error, drop_ignored,
                                    evaluate_tracks, hota, ignore_below_height)


BYTETRACK_NOISE = (1 / 20, 1 / 160, 0.0)  # ByteTrack's and BoT-SORT's weights: the hand computations below use them


def test_kalman_initiate_and_predict_by_hand():
    """z = (10, 20, 40, 40) (cx, cy, w, h): position std 2 * 40 / 20 = 4 (var 16), velocity std 10 * 40 / 160 = 2.5.
    One frame later: var(cx) = 16 + 6.25 (velocity carried) + (40 / 20)^2 = 26.25, cov(cx, vx) = 6.25 + 0,
    var(vx) = 6.25 + (40 / 160)^2 = 6.3125; the mean does not move (zero velocity)."""
    kalman = KalmanFilter(*BYTETRACK_NOISE)
    mean, cov = kalman.initiate(np.array([10.0, 20, 40, 40]))
    assert mean.tolist() == [10, 20, 40, 40, 0, 0, 0, 0]
    assert cov[0, 0] == pytest.approx(16) and cov[4, 4] == pytest.approx(6.25) and cov[2, 2] == pytest.approx(16)
    mean, cov = kalman.predict(mean, cov)
    assert mean.tolist() == [10, 20, 40, 40, 0, 0, 0, 0]
    assert cov[0, 0] == pytest.approx(26.25) and cov[0, 4] == pytest.approx(6.25) and cov[4, 4] == pytest.approx(6.3125)


def test_kalman_update_by_hand():
    """After the predict above, measuring cx = 14: S = 26.25 + (40 / 20)^2 = 30.25, gain on cx = 26.25 / 30.25,
    on vx = 6.25 / 30.25; so cx = 10 + 4 * 26.25 / 30.25 and vx = 4 * 6.25 / 30.25."""
    kalman = KalmanFilter(*BYTETRACK_NOISE)
    mean, cov = kalman.predict(*kalman.initiate(np.array([10.0, 20, 40, 40])))
    mean, cov = kalman.update(mean, cov, np.array([14.0, 20, 40, 40]))
    assert mean[0] == pytest.approx(10 + 4 * 26.25 / 30.25) and mean[4] == pytest.approx(4 * 6.25 / 30.25)
    assert cov[0, 0] == pytest.approx(26.25 - 26.25**2 / 30.25)


def test_kalman_velocity_noise_grows_with_the_velocity():
    """Defaults: velocity std w / 80 (x, w) or h / 80 (y, h) + 0.5 |v| per frame. From an exact state (zero
    covariance), an 80 x 40 box moving vx = 8, vy = 0, vw = 0, vh = -2 px per frame: var(vx) = (1 + 4)^2 = 25,
    var(vy) = 0.5^2, var(vw) = 1, var(vh) = (0.5 + 1)^2; var(cx) = (80 / 20)^2 = 16, var(cy) = (40 / 20)^2 = 4.
    ByteTrack's weights give (80 / 160)^2 and (40 / 160)^2, however fast the car goes."""
    mean, exact = np.array([100.0, 50, 80, 40, 8, 0, 0, -2]), np.zeros((8, 8))
    _, cov = KalmanFilter().predict(mean, exact)
    assert np.diag(cov)[[0, 1, 4, 5, 6, 7]] == pytest.approx([16, 4, 25, 0.25, 1, 2.25])
    _, cov = KalmanFilter(*BYTETRACK_NOISE).predict(mean, exact)
    assert np.diag(cov)[4:] == pytest.approx([0.25, 0.0625, 0.25, 0.0625])


def test_box_conversions_round_trip():
    boxes = np.array([[10.0, 20, 50, 40], [0, 0, 1, 8]])
    assert xyxy_to_cxcywh(boxes).tolist() == [[30, 30, 40, 20], [0.5, 4, 1, 8]]
    assert np.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


def _car(x: float, y: float, w: float = 40, h: float = 20) -> list[float]:
    return [x, y, x + w, y + h]


def test_crossing_cars_keep_their_ids():
    """Two cars drive towards each other on the same row and pass through each other (frames 9-12 overlap):
    the Kalman velocities carry each identity across."""
    tracker, ids = ByteTracker(), {}
    for frame in range(25):
        a, b = _car(10 + 8 * frame, 100), _car(210 - 8 * frame, 100)
        for track in tracker.update(np.array([a, b]), np.array([0.9, 0.85]), np.array([1, 1])):
            side = "a" if abs(track.box[0] - a[0]) < abs(track.box[0] - b[0]) else "b"
            ids.setdefault(side, set()).add(track.track_id)
    assert ids == {"a": {1}, "b": {2}}


def _dash_camera_box(x: float, z: float, size=(480, 320)) -> np.ndarray | None:
    """The 1.8 m wide, 1.45 m high face of a car at lateral x and distance z (metres) through a level pinhole camera
    (focal length 450 px, principal point (240, 130), 1.5 m above the road), clipped to the frame; None when under 30%
    of it shows (the renderer's rule)."""
    full = np.array([240 + 450 * (x - 0.9) / z, 130 + 450 * 0.05 / z, 240 + 450 * (x + 0.9) / z, 130 + 450 * 1.5 / z])
    shown = np.clip(full, 0, [*size, *size])
    area = lambda b: max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)  # noqa: E731
    return shown if area(shown) >= 0.3 * area(full) else None


def _oncoming_queue(tracker: ByteTracker, line: LineCounter) -> dict[int, set[int]]:
    """Four oncoming cars 8 m apart in the lane 3.5 m left of a dash camera, closing 2.5 m per frame (25 m/s at
    10 fps): each grows 25% or more per frame near the camera and leaves through the frame's left edge just before
    the next one takes its place. Returns car -> the track IDs it got; the line counts the tracks' bottom centres."""
    ids: dict[int, set[int]] = {}
    for frame in range(30):
        cars = [(car, _dash_camera_box(-3.5, z0 - 2.5 * frame)) for car, z0 in enumerate((25, 33, 41, 49))
                if z0 - 2.5 * frame > 2.5]  # passed the camera: gone
        cars = [(car, box) for car, box in cars if box is not None]
        boxes = np.array([box for _, box in cars]).reshape(-1, 4)
        tracks = tracker.update(boxes, np.full(len(boxes), 0.9), np.ones(len(boxes), int))
        for track in tracks:
            car = cars[int(np.argmin(np.abs(boxes - track.detection).sum(1)))][0]
            ids.setdefault(car, set()).add(track.track_id)
        line.update(frame, frame / 10, [(t.track_id, "car", bottom_centre(t.detection)) for t in tracks])
    return ids


def test_cars_approaching_a_dash_camera_keep_their_ids_and_each_count_once():
    """The driver's-eye failure by hand: each car's bottom centre crosses y = 208 (65% of the frame) at z = 8.7 m,
    fully in view. With ByteTrack's pedestrian noise the lagging prediction of the car that just left takes over the
    next car in the lane (IDs passed on, so the line counts fewer cars); the car-aware noise keeps one ID each."""
    line = LineCounter("gate", (0, 208), (480, 208))
    assert _oncoming_queue(ByteTracker(), line) == {0: {1}, 1: {2}, 2: {3}, 3: {4}}
    assert line.counts == {"left": {}, "right": {"car": 4}}
    old_line = LineCounter("gate", (0, 208), (480, 208))
    old = _oncoming_queue(ByteTracker(kalman=KalmanFilter(*BYTETRACK_NOISE)), old_line)
    assert any(len(ids) > 1 for ids in old.values()) and old_line.total() < 4


@pytest.mark.parametrize("first, step", [(10, 15), (20, 20), (30, 30)])
def test_a_car_entering_through_the_frame_edge_keeps_one_id(first: int, step: int):
    """A car 50 px wide and 100 px long drives up into a 480 px high frame at ``step`` px per frame; its first box is
    the ``first`` px that show, so its box's shape changes from 5:1 to 1:2 within a few frames. A filter of the aspect
    ratio w / h (SORT's, ByteTrack's) lagged: its prediction widened to twice the car and the car got a second ID.
    The width is its own state now (BoT-SORT's)."""
    tracker, ids = ByteTracker(), set()
    for frame in range(25):
        top = 480 - first - step * frame
        tracks = tracker.update(np.array([[200.0, top, 250, min(top + 100, 480)]]), np.array([0.9]), np.array([1]))
        ids |= {t.track_id for t in tracks}
    assert ids == {1}


def test_a_lost_track_keeps_its_size():
    """ByteTrack and BoT-SORT stop a lost track's size from changing: here a box shrinking 5 px a frame (a car sliding
    under a bridge) vanishes; ten frames later its prediction still has the size it had, rather than a negative one."""
    tracker = ByteTracker()
    for frame in range(8):
        tracker.update(np.array([[100.0, 100 + 5 * frame, 150, 200]]), np.array([0.9]), np.array([1]))
    for _ in range(10):
        tracker.update(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    (track,) = tracker.tracks
    width, height = track.box[2:] - track.box[:2]
    assert track.state == "lost" and width == pytest.approx(50, abs=1) and 55 <= height <= 65  # last seen 65 tall


def test_a_briefly_lost_track_keeps_its_id_and_a_long_gap_gets_a_new_one():
    tracker = ByteTracker(max_lost=5)
    seen = []
    for frame in range(30):
        visible = not (10 <= frame < 14) and not (18 <= frame < 26)  # gaps of 4 (kept) and 8 (> max_lost) frames
        boxes = np.array([_car(10 + 3 * frame, 50)]) if visible else np.zeros((0, 4))
        found = tracker.update(boxes, np.full(len(boxes), 0.9), np.ones(len(boxes), int))
        seen += [t.track_id for t in found]
    assert sorted(set(seen)) == [1, 2] and seen[:10] == [1] * 10 and seen[10:14] == [1] * 4 and seen[-1] == 2


def test_small_boxes_start_no_track_but_a_running_track_follows_them():
    """track.min_box_area: a 6x6 box (36 px^2) below a floor of 100 starts nothing; a 20x20 car starts track 1 and
    keeps it while it shrinks to 6x6 (a car driving away)."""
    tracker = ByteTracker(min_box_area=100.0)
    for _ in range(5):
        assert tracker.update(np.array([[10.0, 10.0, 16.0, 16.0]]), np.array([0.9]), np.array([1])) == []
    tracker = ByteTracker(min_box_area=100.0)
    ids = []
    for side in (20, 20, 18, 15, 12, 9, 6, 6):
        found = tracker.update(np.array([[50.0, 50.0, 50.0 + side, 50.0 + side]]), np.array([0.9]), np.array([1]))
        ids += [t.track_id for t in found]
    assert ids == [1] * 8
    assert ByteTracker().update(np.array([[10.0, 10.0, 16.0, 16.0]]), np.array([0.9]), np.array([1]))[0].track_id == 1


def test_tracker_takes_every_threshold_of_the_track_config():
    """ByteTracker.from_config: each threshold of the `track` section reaches the tracker, and the two agree on their
    defaults, so `detector track` with an empty section runs ByteTracker() as the tests do."""
    from dataclasses import fields, replace

    from detector.config import TrackConfig

    state = {"tracks", "frame", "next_id", "kalman", "freeze_lost_size"}  # the tracker's own, not config
    thresholds = {f.name for f in fields(ByteTracker)} - state
    assert thresholds <= {f.name for f in fields(TrackConfig)}
    assert {name: getattr(ByteTracker.from_config(TrackConfig()), name) for name in thresholds} == \
        {name: getattr(ByteTracker(), name) for name in thresholds}
    changed = replace(TrackConfig(), high_thresh=0.8, new_track_thresh=0.85, max_lost=7, min_box_area=900.0)
    tracker = ByteTracker.from_config(changed)
    assert (tracker.high_thresh, tracker.new_track_thresh, tracker.max_lost, tracker.min_box_area) == \
        (0.8, 0.85, 7, 900.0)


def test_low_score_detections_keep_an_occluded_track():
    """ByteTrack's second association: a car half hidden scores 0.3 and still extends its track."""
    tracker = ByteTracker()
    scores = [0.9] * 5 + [0.3] * 5 + [0.9] * 5
    ids = [t.track_id for f, s in enumerate(scores) for t in tracker.update(np.array([_car(5 * f, 0)]),
                                                                              np.array([s]), np.array([1]))]
    assert ids == [1] * 15


def test_ids_start_at_one_and_never_repeat():
    tracker, seen = ByteTracker(max_lost=2), []
    for frame in range(40):
        boxes = np.array([_car(300 * (frame // 10), 0)])  # a new car every 10 frames, far from the last one
        seen += [t.track_id for t in tracker.update(boxes, np.array([0.9]), np.array([1]))]
    assert sorted(set(seen)) == [1, 2, 3, 4]


def _path(counter, points, track_id=7, label="car"):
    events = []
    for frame, point in enumerate(points):
        events += counter.update(frame, frame / 10, [(track_id, label, np.array(point, float))])
    return events


def test_line_counting_on_scripted_paths():
    """A horizontal line from (0, 100) to (200, 100): walking from its first point to its second (to the right on
    screen), "left" is up (smaller y)."""
    line = LineCounter("gate", (0, 100), (200, 100))
    assert [e.direction for e in _path(line, [(50, 150), (50, 120), (50, 80), (50, 40)], 1)] == ["left"]
    jitter = [(80, 120), (80, 99), (80, 103), (80, 97), (80, 102), (80, 60)]  # stops on the line, jitters
    assert len(_path(line, jitter, 2)) == 1
    u_turn = [(120, 130), (120, 90), (120, 70), (120, 95), (120, 130)]  # crosses up, turns back down
    assert [e.direction for e in _path(line, u_turn, 3)] == ["left"]
    around = [(250, 150), (250, 50)]  # passes beside the segment's end: no crossing
    assert _path(line, around, 4) == []
    down = _path(line, [(20, 50), (20, 150)], 5, "truck")
    assert [(e.direction, e.label, e.track_id) for e in down] == [("right", "truck", 5)]
    assert line.counts == {"left": {"car": 3}, "right": {"truck": 1}} and line.total() == 4


def test_a_crossing_counts_after_min_frames_sightings_on_the_far_side():
    """min_frames=2: a box that jumps across the line for one frame (its track then ends, or it jumps back) is not a
    crossing; a car that stays over counts once, at the frame it first showed there; 1 counts at once as before."""
    one, two = LineCounter("gate", (0, 100), (200, 100)), LineCounter("gate", (0, 100), (200, 100), min_frames=2)
    blip = [(40, 130), (40, 95)]  # from 30 px below to 5 px above the line, then the track ends
    assert [e.direction for e in _path(one, blip, 1)] == ["left"] and _path(two, blip, 1) == []
    back = [(60, 130), (60, 90), (60, 120), (60, 125)]  # above for one frame, then below again
    assert len(_path(one, back, 2)) == 1 and _path(two, back, 2) == []
    through = [(80, 130), (80, 110), (80, 90), (80, 100.5), (80, 70), (80, 40)]  # over, on the line, over again
    events = _path(two, through, 3)
    assert [(e.direction, e.frame, e.time_s) for e in events] == [("left", 2, 0.2)]  # counted at frame 4, dated 2
    assert two.counts == {"left": {"car": 1}, "right": {}}
    with pytest.raises(DetectorError, match="min_frames is 0; expected at least 1"):
        LineCounter("gate", (0, 100), (200, 100), min_frames=0)


def test_zone_occupancy_entries_exits_and_dwell():
    zone = ZoneCounter("box", np.array([[0, 0], [100, 0], [100, 100], [0, 100]]), fps=10)
    path = [(-10, 50), (10, 50), (50, 50), (90, 50), (110, 50)]
    events = _path(zone, path, 1)
    assert [(e.kind, e.frame) for e in events] == [("enter", 1), ("exit", 4)]
    assert zone.occupancy == [0, 1, 1, 1, 0] and zone.dwell_seconds() == {1: 0.3}


@pytest.mark.parametrize("points, message", [
    ([[0, 0], [10, 0]], "has 2 points; a polygon needs at least 3"),
    ([[0, 0], [10, 10], [20, 20]], "has no area"),
    ([[0, 0], [10, 10], [10, 0], [0, 10]], "crosses itself"),
])
def test_bad_zones_are_one_sentence(points, message):
    with pytest.raises(DetectorError, match=message):
        ZoneCounter("z", np.array(points, float), fps=10)


def test_mot_files_round_trip_and_malformed_lines(tmp_path):
    boxes = [MotBox(2, 1, (10.0, 20.0, 50.0, 60.0), 0.9), MotBox(1, 3, (0.5, 1.25, 10.0, 20.5), 0.5)]
    path = write_mot(tmp_path / "pred.txt", boxes)
    assert path.read_text().splitlines()[0] == "1,3,0.50,1.25,9.50,19.25,0.5000,-1,-1,-1"
    assert read_mot(path) == sorted(boxes, key=lambda b: b.frame)
    with pytest.raises(DetectorError, match="already exists"):
        write_mot(path, boxes)
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,0,0,10,10,1,-1,-1,-1\n2,1,0,0,10\n")
    with pytest.raises(DetectorError, match=r"bad.txt:2: expected at least 7 comma-separated fields"):
        read_mot(bad)
    bad.write_text("0,1,0,0,10,10,1\n")
    with pytest.raises(DetectorError, match=r"bad.txt:1: expected a frame >= 1"):
        read_mot(bad)


def test_hota_hand_computed_id_switch():
    """One object over 4 frames, found perfectly, but as ID 1 in frames 1-2 and ID 2 in frames 3-4.
    Every alpha: TP = 4, FN = FP = 0 -> DetA = 1; A(g, 1) = 2 / (4 + 2 - 2) = 0.5, A(g, 2) = 0.5 -> AssA = 0.5;
    HOTA = sqrt(1 * 0.5)."""
    gt = [MotBox(f, 1, (0.0, 0.0, 10.0, 10.0)) for f in range(1, 5)]
    pred = [MotBox(f, 1 if f <= 2 else 2, (0.0, 0.0, 10.0, 10.0)) for f in range(1, 5)]
    result = hota(gt, pred)
    assert result["DetA"] == pytest.approx(1.0) and result["AssA"] == pytest.approx(0.5)
    assert result["HOTA"] == pytest.approx(0.5**0.5)
    clear = clear_and_identity(gt, pred)
    assert clear["ID switches"] == 1 and clear["MOTA"] == pytest.approx(0.75) and clear["IDF1"] == pytest.approx(0.5)


def test_switches_across_a_gap_are_told_apart():
    """Object 1 changes ID between consecutive frames (2 -> 3: a switch in plain view). Object 2 is hidden in frame 3
    and comes back under a new ID in frame 4; object 3 too, but its new track shows only from frame 5 (a tracker
    confirms a track on its second detection): both are switches across a gap, which a full occlusion may explain."""
    def boxes(track_id: int, x: float, frames, ids=None) -> list[MotBox]:
        return [MotBox(f, ids(f) if ids else track_id, (x, 0.0, x + 10, 10.0)) for f in frames]

    gt = boxes(1, 0, range(1, 6)) + boxes(2, 50, (1, 2, 4, 5)) + boxes(3, 100, (1, 2, 4, 5))
    pred = (boxes(0, 0, range(1, 6), lambda f: 7 if f <= 2 else 8) + boxes(0, 50, (1, 2, 4, 5), lambda f: 9 + (f > 2))
            + boxes(0, 100, (1, 2, 5), lambda f: 11 + (f > 2)))
    clear = clear_and_identity(gt, pred)
    assert clear["ID switches"] == 3 and clear["ID switches across a gap"] == 2


def test_identical_prediction_and_truth_score_one():
    gt = [MotBox(f, i, (10.0 * i + f, 5.0, 10.0 * i + f + 8, 15.0)) for f in range(1, 6) for i in (1, 2, 3)]
    result = evaluate_tracks(gt, list(gt))
    assert result["MOTA"] == result["IDF1"] == pytest.approx(1.0) and result["HOTA"] == pytest.approx(1.0)


def test_predictions_in_an_ignore_region_count_neither_way():
    """Frame 1 has one car to find at x 0-10 and an ignore region at x 50-70 (a car too hidden to ask for). A
    prediction 3/4 inside the region is dropped (no false positive); one only 1/4 inside, and one matching the car
    even though the car overlaps the region, stay: MOTA is 1 - 1 FP / 1 car = 0 instead of -1."""
    gt = [MotBox(1, 1, (0.0, 0.0, 10.0, 10.0))]
    ignore = [MotBox(1, 0, (50.0, 0.0, 70.0, 10.0), 0.0), MotBox(1, 0, (0.0, 0.0, 6.0, 10.0), 0.0)]
    inside, quarter = MotBox(1, 5, (45.0, 0.0, 65.0, 10.0)), MotBox(1, 6, (65.0, 0.0, 85.0, 10.0))
    pred = [MotBox(1, 4, (0.0, 0.0, 10.0, 10.0)), inside, quarter]
    assert drop_ignored(gt, pred, ignore) == [pred[0], quarter]
    assert evaluate_tracks(gt, pred, ignore)["false positives"] == 1 and evaluate_tracks(gt, pred)["false positives"] == 2
    assert evaluate_tracks(gt, pred, ignore)["MOTA"] == pytest.approx(0.0)


def test_min_height_scores_as_kitti_tracking():
    """KITTI's rule at 25 px. Frame 1: car A (30 px tall) is asked for, B (10 px, found) and C (8 px, missed) are
    not; the predictions on A and B and a 12-px false positive. Frame 2: A again, found by a 20-px box at IoU 2/3 (a
    small box on a tall car still scores). All cars: 4 boxes, 3 hits, 1 miss (C), 1 false positive, MOTA 1 - 2/4.
    At 25 px: 2 boxes (A twice), 2 hits; the boxes on B and the 12-px one leave; MOTA 1."""
    gt = [MotBox(1, 1, (0.0, 0.0, 20.0, 30.0)), MotBox(1, 2, (100.0, 0.0, 110.0, 10.0)),
          MotBox(1, 3, (150.0, 0.0, 158.0, 8.0)), MotBox(2, 1, (0.0, 0.0, 20.0, 30.0))]
    pred = [MotBox(1, 7, (0.0, 0.0, 20.0, 30.0)), MotBox(1, 8, (100.0, 0.0, 110.0, 10.0)),
            MotBox(1, 9, (200.0, 0.0, 210.0, 12.0)), MotBox(2, 7, (0.0, 5.0, 20.0, 25.0))]
    truth, kept, ignore = ignore_below_height(gt, pred, [], 25)
    assert truth == [gt[0], gt[3]] and kept == [pred[0], pred[3]] and ignore == [gt[1], gt[2]]
    everything = evaluate_tracks(gt, pred)
    assert (everything["ground-truth boxes"], everything["misses"], everything["false positives"]) == (4, 1, 1)
    assert everything["MOTA"] == pytest.approx(1 - 2 / 4)
    kitti = evaluate_tracks(gt, pred, min_height=25)
    assert (kitti["ground-truth boxes"], kitti["misses"], kitti["false positives"]) == (2, 0, 0)
    assert kitti["MOTA"] == pytest.approx(1.0) and kitti["IDF1"] == pytest.approx(1.0)
    assert evaluate_tracks(gt, pred, min_height=0) == everything
    with pytest.raises(DetectorError, match="min_height"):
        ignore_below_height(gt, pred, [], -1)


def test_a_crossing_in_the_wrong_direction_is_a_count_error(tmp_path):
    """1/9 left/right against a true 0/10: the totals agree, but one car is counted the wrong way, so two per-direction
    counts are off by one each (2/10 of the true crossings)."""
    assert direction_count_error((1, 9), (0, 10)) == pytest.approx(0.2)
    assert direction_count_error((0, 10), (0, 10)) == 0.0
    assert direction_count_error((12, 3), (12, 2)) == pytest.approx(1 / 14)
    assert direction_count_error((1, 0), (0, 0)) == 1.0  # no true crossing: the number counted
    predicted, truth = tmp_path / "counts.json", tmp_path / "truth.json"
    predicted.write_text(json.dumps({"lines": {"gate": {"left": 1, "right": 9, "total": 10}}}))
    truth.write_text(json.dumps({"lines": {"gate": {"left": 0, "right": 10}}}))
    gate = count_errors(str(predicted), str(truth))["gate"]
    assert gate == {"left": 1, "right": -1, "total_relative": 0.0, "by_direction_relative": pytest.approx(0.2)}
