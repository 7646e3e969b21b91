"""ByteTrack (Zhang et al., 2022): tracking by associating every detection, the low-score ones included.

Each frame: predict every track with its Kalman filter (kalman.py: BoT-SORT's width-and-height state, noise made
for cars; a lost track keeps its size, as in ByteTrack, rather than shrinking away or ballooning); match confirmed
and lost tracks to the high-score detections (IoU, Hungarian assignment); match the still unmatched confirmed
tracks to the low-score detections (occluded cars score low: they keep their track instead of breaking it); match
tentative tracks to what is left of the high-score detections; start tentative tracks from the remaining high-score
detections of at least ``min_box_area`` square pixels. A tentative track is confirmed by a second match (at once in
the first frame) and only then gets an ID: IDs start at 1, count up and are never reused. A track unmatched for more
than ``max_lost`` frames is removed.

Boxes are (N, 4) float x1, y1, x2, y2 in frame pixels; tracks match only detections of their own class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from detector.boxes import box_iou
from detector.track.kalman import KalmanFilter, cxcywh_to_xyxy, xyxy_to_cxcywh

if TYPE_CHECKING:
    from detector.config import TrackConfig

__all__ = ["ByteTracker", "Track", "TrackState", "iou_matrix", "match"]


class TrackState:
    TENTATIVE, CONFIRMED, LOST, REMOVED = "tentative", "confirmed", "lost", "removed"


@dataclass
class Track:
    """One tracked object: its Kalman state, class, last score and history of the frames it was seen in."""

    mean: np.ndarray  # (8,) cx, cy, w, h and their velocities
    covariance: np.ndarray  # (8, 8)
    label: int
    score: float
    first_frame: int
    last_frame: int  # the last frame a detection updated it
    detection: np.ndarray  # (4,) xyxy of the detection that last updated it: what the outputs report
    state: str = TrackState.TENTATIVE
    track_id: int = 0  # 0 until confirmed
    hits: int = 1

    @property
    def box(self) -> np.ndarray:
        """(4,) x1, y1, x2, y2 of the Kalman state (the prediction the association uses). Outputs report
        `detection` instead, the box the detector saw: the filter smooths, so a car entering the frame, whose box
        grows on one side, would lag a little behind it."""
        return cxcywh_to_xyxy(self.mean[:4])[0]


def iou_matrix(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(A, 4) and (B, 4) xyxy arrays -> (A, B) IoU (torchvision's box_iou; 0 where both boxes are empty)."""
    a = torch.from_numpy(np.asarray(boxes_a, np.float64).reshape(-1, 4))
    b = torch.from_numpy(np.asarray(boxes_b, np.float64).reshape(-1, 4))
    return np.nan_to_num(box_iou(a, b).numpy())


def match(cost: np.ndarray, max_cost: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Hungarian assignment on an (A, B) cost; pairs above ``max_cost`` are not matches.
    Returns (matched (row, col) pairs, unmatched rows, unmatched cols)."""
    if cost.size == 0:
        return [], list(range(cost.shape[0])), list(range(cost.shape[1]))
    rows, cols = linear_sum_assignment(np.where(cost > max_cost, max_cost + 1.0, cost))
    pairs = [(r, c) for r, c in zip(rows.tolist(), cols.tolist()) if cost[r, c] <= max_cost]
    matched_rows, matched_cols = {r for r, _ in pairs}, {c for _, c in pairs}
    return (pairs, [r for r in range(cost.shape[0]) if r not in matched_rows],
            [c for c in range(cost.shape[1]) if c not in matched_cols])


@dataclass
class ByteTracker:
    """ByteTrack with its thresholds (the `track` config section). ``update`` once per frame, in order."""

    high_thresh: float = 0.5  # detections at or above start and keep tracks (the first association)
    low_thresh: float = 0.1  # detections between low and high only keep existing tracks (the second association)
    new_track_thresh: float = 0.6  # an unmatched high-score detection above this starts a tentative track
    match_iou: float = 0.2  # first association: IoU at least this (ByteTrack's match_thresh 0.8 as 1 - IoU)
    low_match_iou: float = 0.5  # second association, with low-score detections
    tentative_match_iou: float = 0.3  # tentative tracks with the remaining high-score detections
    max_lost: int = 30  # frames a track may go unmatched before it is removed (its ID is kept until then)
    # A detection smaller than this (square pixels) starts no track; tracks already running still follow small boxes,
    # so a car driving away keeps its ID. ByteTrack's min_box_area (10 in its demo) drops such boxes from the outputs
    # instead, which also ends the output of a receding car.
    min_box_area: float = 0.0
    freeze_lost_size: bool = True  # ByteTrack's and BoT-SORT's: a lost track's predicted box keeps its size
    tracks: list[Track] = field(default_factory=list)
    frame: int = 0
    next_id: int = 1
    kalman: KalmanFilter = field(default_factory=KalmanFilter)

    @classmethod
    def from_config(cls, config: TrackConfig) -> ByteTracker:
        """A tracker with the thresholds of a `track` config section (TrackConfig): every field the two share by name,
        so a threshold added to both needs no copying code."""
        shared = {f.name for f in fields(cls) if f.init} & {f.name for f in fields(config)}
        return cls(**{name: getattr(config, name) for name in shared})

    def update(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[Track]:
        """One frame's detections -> the confirmed tracks matched in this frame (``detection``: their box now).

        boxes (D, 4) xyxy, scores (D,), labels (D,) int."""
        self.frame += 1
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores, labels = np.asarray(scores, np.float64).reshape(-1), np.asarray(labels).reshape(-1)
        for track in self.tracks:
            if self.freeze_lost_size and track.state == TrackState.LOST:
                track.mean[6:] = 0.0
            track.mean, track.covariance = self.kalman.predict(track.mean, track.covariance)
        high = np.flatnonzero(scores >= self.high_thresh)
        low = np.flatnonzero((scores >= self.low_thresh) & (scores < self.high_thresh))
        active = [t for t in self.tracks if t.state in (TrackState.CONFIRMED, TrackState.LOST)]
        tentative = [t for t in self.tracks if t.state == TrackState.TENTATIVE]
        # 1: confirmed and lost tracks with the high-score detections
        left_tracks, left_high = self._associate(active, high, boxes, scores, labels, self.match_iou)
        # 2: confirmed tracks still unmatched with the low-score detections (lost ones stay lost)
        still = [t for t in left_tracks if t.state == TrackState.CONFIRMED]
        unmatched, _ = self._associate(still, low, boxes, scores, labels, self.low_match_iou)
        for track in unmatched:
            track.state = TrackState.LOST
        # 3: tentative tracks with the high-score detections nobody took; unmatched tentative tracks end
        failed, left_high = self._associate(tentative, left_high, boxes, scores, labels, self.tentative_match_iou)
        for track in failed:
            track.state = TrackState.REMOVED
        # 4: new tentative tracks (confirmed at once in the first frame, so a video starts with its cars)
        x1, y1, x2, y2 = boxes.T
        areas = (x2 - x1) * (y2 - y1)
        for index in left_high:
            if scores[index] >= self.new_track_thresh and areas[index] >= self.min_box_area:
                mean, covariance = self.kalman.initiate(xyxy_to_cxcywh(boxes[index])[0])
                track = Track(mean, covariance, int(labels[index]), float(scores[index]), self.frame, self.frame,
                              boxes[index].copy())
                if self.frame == 1:
                    self._confirm(track)
                self.tracks.append(track)
        for track in self.tracks:
            if track.state == TrackState.LOST and self.frame - track.last_frame > self.max_lost:
                track.state = TrackState.REMOVED
        self.tracks = [t for t in self.tracks if t.state != TrackState.REMOVED]
        return [t for t in self.tracks if t.state == TrackState.CONFIRMED and t.last_frame == self.frame]

    def _associate(self, tracks: list[Track], candidates: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                   labels: np.ndarray, min_iou: float) -> tuple[list[Track], np.ndarray]:
        """Match ``tracks`` to the detections ``candidates`` (indices) by IoU within a class; update the matched
        tracks. Returns (unmatched tracks, unmatched candidate indices)."""
        if not tracks or not len(candidates):
            return list(tracks), candidates
        predicted = np.stack([t.box for t in tracks])  # (T, 4)
        iou = iou_matrix(predicted, boxes[candidates])  # (T, C)
        same_class = np.array([t.label for t in tracks])[:, None] == labels[candidates][None, :]
        cost = np.where(same_class, 1.0 - iou, 2.0)
        pairs, rows, cols = match(cost, 1.0 - min_iou)
        for row, col in pairs:
            self._update_track(tracks[row], candidates[col], boxes, scores)
        return [tracks[r] for r in rows], candidates[cols]

    def _update_track(self, track: Track, index: int, boxes: np.ndarray, scores: np.ndarray) -> None:
        track.mean, track.covariance = self.kalman.update(track.mean, track.covariance, xyxy_to_cxcywh(boxes[index])[0])
        track.score, track.last_frame, track.hits = float(scores[index]), self.frame, track.hits + 1
        track.detection = boxes[index].copy()
        if track.state in (TrackState.TENTATIVE, TrackState.LOST):
            self._confirm(track)

    def _confirm(self, track: Track) -> None:
        if track.track_id == 0:
            track.track_id, self.next_id = self.next_id, self.next_id + 1
        track.state = TrackState.CONFIRMED
