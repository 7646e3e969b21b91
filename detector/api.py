"""The Python API, usable without the command line.

    from detector import Detector
    det = Detector.load("runs/x/best.pt")
    detections = det.predict("street.jpg")          # or an RGB array, or a list of either
    detections = det.predict("street.jpg", tta=True)  # test-time augmentation (detector.tta, eval.tta_* keys)
    detections = det.predict("4k_drone.jpg", slice=640)  # tile by tile at native resolution (detector.slicing)
    for frame in det.predict_video("clip.mp4"):     # per-frame results
        print(frame.index, len(frame.detections))
    summary = det.track("clip.mp4", lines=["0,300,960,300:gate"])  # IDs, counts, outputs in runs/track/
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch

from detector.config import Config
from detector.data.dataset import image_to_tensor
from detector.data.images import as_rgb_array
from detector.data.transforms import build_transform
from detector.checkpoint import load_detector
from detector.detector import FastRCNN
from detector.distributed import resolve_device
from detector.runtime import prepare_for_inference
from detector.slicing import DEFAULT_OVERLAP
from detector.structures import Detections, DetectorError
from detector.tta import TestTimeAugmentation, build_tta

if TYPE_CHECKING:
    from detector.track.run import TrackSummary
    from detector.video import FrameResult

ImageInput = str | Path | np.ndarray


class Detector:
    """A trained detector with its preprocessing: give it images in any size, get boxes in their pixels."""

    def __init__(self, model: FastRCNN, config: Config, device: torch.device | str = "cpu",
                 runtime: str = "auto", copy_model: bool = True) -> None:
        """`runtime` (detector.runtime: auto, torch or onnx) swaps the backbone of a copy of `model` for its faster
        inference version (the caller's model stays trainable; `copy_model=False` when nobody else holds it);
        `self.runtime` says which one runs."""
        self.device = torch.device(device)
        self.model = (copy.deepcopy(model) if copy_model else model).to(self.device).eval()
        self.runtime = prepare_for_inference(self.model, runtime, self.device)
        self.config = config
        self.transform = build_transform(None, config.data.max_size, train=False)
        self._tta: TestTimeAugmentation | None = None  # built on first use: its settings are checked then

    @property
    def class_names(self) -> list[str]:
        return list(self.config.model.class_names)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "auto", overrides: Sequence[str] = (),
             runtime: str = "auto") -> "Detector":
        """Load a checkpoint written by `detector train` (weights only: no code in it runs); `overrides`
        (``section.key=value``) change inference settings such as model.score_thresh or data.max_size;
        `runtime` picks how the backbone runs (detector.runtime: ONNX Runtime on CPU by default)."""
        model, config = load_detector(checkpoint, overrides)
        if config.model.proposals == "file":
            raise DetectorError(f"checkpoint {checkpoint} uses proposals from a file (model.proposals: file); "
                                "run `detector eval` with that file, or use a checkpoint trained with the RPN")
        return cls(model, config, resolve_device(device), runtime, copy_model=False)  # the model is ours alone

    def _to_tensor(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int]]:
        image = as_rgb_array(image)
        resized = self.transform(image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0, 4), np.float32)).image
        return image_to_tensor(resized), (image.shape[0], image.shape[1])

    @property
    def tta(self) -> TestTimeAugmentation:
        """The test-time augmentation of the config's eval.tta_* keys (sizes, hflip, fusion, iou)."""
        if self._tta is None:
            self._tta = build_tta(self.config)
        return self._tta

    def predict_batch(self, images: Sequence[ImageInput], score_thresh: float | None = None,
                      classes: Sequence[str] | None = None, max_det: int | None = None,
                      tta: bool | None = None, slice: int | str | None = None,
                      overlap: float = DEFAULT_OVERLAP) -> list[Detections]:
        """Detections for each image, boxes in that image's pixels. ``tta``: fuse several sizes and mirrored views
        (detector.tta; None = the config's eval.tta). ``slice``: predict each image tile by tile, tiles of this many
        px overlapping by ``overlap`` (detector.slicing; ``"auto"``: tiles of data.max_size when the longest side
        exceeds twice data.max_size); None (the default): the whole image at data.max_size."""
        if slice is not None:
            from detector.slicing import predict_sliced

            return [predict_sliced(self, image, slice, overlap, score_thresh=score_thresh, classes=classes,
                                   max_det=max_det, tta=tta) for image in images]
        if len(images) == 0:
            return []
        if self.config.eval.tta if tta is None else tta:
            detections = self.tta.predict_arrays(self.model, [as_rgb_array(image) for image in images])
        else:
            tensors, sizes = zip(*(self._to_tensor(image) for image in images))
            detections = self.model.predict(list(tensors), list(sizes))
        return [self._select(d.to("cpu"), score_thresh, classes, max_det) for d in detections]

    def predict(self, images: ImageInput | Sequence[ImageInput], score_thresh: float | None = None,
                classes: Sequence[str] | None = None, max_det: int | None = None,
                tta: bool | None = None, slice: int | str | None = None,
                overlap: float = DEFAULT_OVERLAP) -> Detections | list[Detections]:
        """One image (path or RGB array) -> Detections; a list -> list[Detections]. ``tta``, ``slice`` and
        ``overlap`` as in `predict_batch`."""
        if isinstance(images, (str, Path, np.ndarray)):
            return self.predict_batch([images], score_thresh, classes, max_det, tta, slice, overlap)[0]
        return self.predict_batch(list(images), score_thresh, classes, max_det, tta, slice, overlap)

    def _select(self, detections: Detections, score_thresh: float | None, classes: Sequence[str] | None,
                max_det: int | None) -> Detections:
        keep = torch.ones(len(detections), dtype=torch.bool)
        if score_thresh is not None:
            keep &= detections.scores >= score_thresh
        if classes:
            unknown = sorted(set(classes) - set(self.class_names))
            if unknown:
                raise DetectorError(f"--classes names {unknown} that this checkpoint does not know; it has {self.class_names}")
            wanted = torch.tensor([self.class_names.index(c) + 1 for c in classes])
            keep &= torch.isin(detections.labels, wanted)
        detections = detections.filter(keep)
        return detections.filter(torch.arange(min(len(detections), max_det))) if max_det is not None else detections

    def track(self, source: str | int, out_dir: str | Path | None = None, lines: Sequence[str] = (),
              zones: Sequence[str] = (), homography: str | Path | None = None, classes: Sequence[str] | None = None,
              batch_size: int = 4, slice: int | str | None = None, overlap: float = DEFAULT_OVERLAP,
              merge: str = "nms", full_frame: bool = True) -> "TrackSummary":
        """Track, count and (with a homography file) measure the speed of the cars in a video or any source
        `predict_video` takes; writes the annotated video, tracks.json/.csv, a MOTChallenge file and counts.json
        (detector.track.run). Lines are ``"x1,y1,x2,y2[:name]"``, zones ``"x1,y1,...,xn,yn[:name]"`` in pixels;
        thresholds come from the config's ``track`` section. ``slice``: detect on each frame tile by tile (tiles of
        this many px, ``overlap``, ``merge`` and ``full_frame`` as `detector.slicing.predict_sliced`; the tiles go
        ``batch_size`` at a time), for cars too small to survive the resize of a large frame to data.max_size."""
        from detector.track.run import run_tracking

        predictor: Any = self
        if slice is not None:
            from detector.slicing import SlicedPredictor

            predictor, batch_size = SlicedPredictor(self, slice, overlap, merge, full_frame, batch_size), 1
        return run_tracking(predictor, source, out_dir, lines, zones, homography, self.config.track, classes,
                            batch_size)

    def predict_video(self, source: str | int, batch_size: int = 4, score_thresh: float | None = None,
                      classes: Sequence[str] | None = None, max_det: int | None = None) -> Iterator[FrameResult]:
        """Per-frame results for a video file, webcam index or stream URL (frames batched for throughput)."""
        from detector.video import predict_frames

        yield from predict_frames(self, source, batch_size, score_thresh, classes, max_det)
