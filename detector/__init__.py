"""detector: a Fast R-CNN-style car detector (ImageNet backbones, RPN / selective search / file proposals,
ROI pooling to the lecture's 3-wide x 2-high grid or 7x7, COCO mAP, detection on images, folders, video files and streams)."""

import os

# FFmpeg (inside OpenCV) prints its own lines on stderr for unreadable videos; our one-sentence errors say it.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__version__ = "0.1.0"

__all__ = ["Detector", "Detections", "__version__"]


def __getattr__(name: str):
    # Lazy: `import detector` stays cheap (the CLI's --help must not import torch-heavy modules).
    if name == "Detector":
        from detector.api import Detector

        return Detector
    if name == "Detections":
        from detector.structures import Detections

        return Detections
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
