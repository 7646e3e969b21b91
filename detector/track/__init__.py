"""Tracking by detection on top of the detector: ByteTrack, line and zone counting, MOTChallenge files, metrics."""

from detector.track.bytetrack import ByteTracker, Track, TrackState
from detector.track.counting import CountEvent, LineCounter, ZoneCounter
from detector.track.kalman import KalmanFilter
from detector.track.mot import MotBox, read_ground_truth, read_mot, write_mot

__all__ = ["ByteTracker", "CountEvent", "KalmanFilter", "LineCounter", "MotBox", "Track", "TrackState",
           "ZoneCounter", "read_ground_truth", "read_mot", "write_mot"]
