"""Synthetic road scenes: the embedded sample data of the demo and of most tests (nothing to download).

Two views are drawn with OpenCV polygons: ``"topdown"`` (a drone over a road) and ``"driver"`` (a dash
camera). Every object is a :class:`Sprite`, a stack of filled polygons painted far-to-near; an owner map
remembers which sprite painted each pixel last, so a car's box is the tight box of its *visible* pixels
after occlusion. A car with under 30% of its pixels visible (hidden, or outside the image) becomes an
ignore region (its full box, clipped to the image), one with none visible is not in the image at all,
and a visible box under 4 px on a side is dropped.

Sizes are ``(height, width)``. Boxes are (M, 4) float32 absolute pixel ``x1, y1, x2, y2`` with
``x2 = last covered column + 1``: a car covering columns 10..29 has ``x1 = 10, x2 = 30``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from detector.boxes import xyxy_to_xywh
from detector.data.synthetic_draw import (
    MIN_BOX_SIDE,
    MIN_VISIBLE_FRACTION,
    SceneRender,
    Sprite,
    compose_scene,
)
from detector.data.synthetic_driver import Camera, _DriverWorld, driver_car
from detector.data.synthetic_topdown import _TopdownWorld, topdown_car
from detector.structures import DetectorError

__all__ = [
    "MIN_BOX_SIDE", "MIN_VISIBLE_FRACTION", "VIEWS", "Camera", "SceneRender", "Sprite", "compose_scene",
    "driver_car", "iter_scenes", "render_scene", "render_video", "topdown_car", "write_coco_dataset",
]

VIEWS = ("topdown", "driver")
_VERSION = 1  # bump when rendering changes, so a cached dataset is not mistaken for a new one


def _check_far_cars(far_cars: float) -> None:
    if not 0.0 <= far_cars <= 1.0:
        raise DetectorError(f"synthetic far_cars must be a share between 0 and 1, got {far_cars}")


def _world(rng: np.random.Generator, size: tuple[int, int], view: str, duration: float, stop_and_go: bool = False,
           occlusions: bool = False, far_cars: float = 0.0):
    if view not in VIEWS:
        raise DetectorError(f"synthetic view must be one of {', '.join(VIEWS)}, got {view!r}")
    if min(size) < 32:
        raise DetectorError(f"synthetic image size must be at least 32x32 pixels (height, width), got {tuple(size)}")
    _check_far_cars(far_cars)
    size = (int(size[0]), int(size[1]))
    if view == "topdown":  # a drone sees every car from the same height: nothing is far
        return _TopdownWorld(rng, size, duration, stop_and_go=stop_and_go, occlusions=occlusions)
    return _DriverWorld(rng, size, duration, stop_and_go=stop_and_go, occlusions=occlusions, far_cars=far_cars)


def _render_frame(world, time: float, rng: np.random.Generator) -> SceneRender:
    sprites, marks = world.frame(time)
    render = compose_scene(world.background, sprites, marks, world.shadow_strength)
    render.image = world.light.apply(render.image, rng)  # lighting never moves pixels, so boxes stay exact
    return render


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (320, 320), view: str = "topdown",
                 far_cars: float = 0.0) -> SceneRender:
    """Render one road scene of ``size`` (height, width) seen ``view`` ("topdown" or "driver").

    Deterministic given the generator state; 0..8 cars (about 12% of scenes have none). Boxes are
    (M, 4) float32 pixel xyxy of visible car pixels; ignore regions are cars under 30% visible.
    ``far_cars``: the driver's view only, the share of cars placed far down the road (see ``_DriverWorld``).
    """
    return _render_frame(_world(rng, size, view, 0.0, far_cars=far_cars), 0.0, rng)


def iter_scenes(num_images: int, size: tuple[int, int] = (320, 320), seed: int = 0,
                views: Sequence[str] = VIEWS, far_cars: float = 0.0) -> Iterator[SceneRender]:
    """Yield ``num_images`` scenes; scene i uses view ``views[i % len(views)]`` and its own generator
    seeded by (seed, i), so a scene does not depend on how many come before it."""
    for index in range(num_images):
        yield render_scene(np.random.default_rng([seed, index]), size, views[index % len(views)], far_cars)


def _coco_annotations(entries: Sequence[tuple[str, int, int, np.ndarray, np.ndarray]]) -> dict:
    """COCO dict from (file_name, height, width, boxes, ignore) per image; ignore regions become iscrowd 1."""
    images, annotations = [], []
    for image_id, (file_name, height, width, boxes, ignore) in enumerate(entries, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for regions, crowd in ((boxes, 0), (ignore, 1)):
            for x, y, w, h in xyxy_to_xywh(regions).tolist():
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
    categories = [{"id": 1, "name": "car", "supercategory": "vehicle"}]
    info = {"description": "detector synthetic road scenes", "version": str(_VERSION)}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _holds_dataset(out_dir: Path, params: dict) -> bool:
    """True when ``out_dir`` already holds the complete dataset rendered with ``params``, False when it is
    absent or empty; DetectorError when it is a file or holds anything else (never overwritten)."""
    annotation_path, params_path = out_dir / "annotations.json", out_dir / "synthetic.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise DetectorError(f"synthetic dataset folder {out_dir} is a file; expected a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if params_path.is_file() and annotation_path.is_file() and json.loads(params_path.read_text()) == params:
            return True
        raise DetectorError(f"{out_dir} already holds files that are not a synthetic dataset with these parameters "
                            f"{params}; choose an empty folder or delete it")
    return False


def write_coco_dataset(out_dir: Path, num_images: int, size: tuple[int, int] = (320, 320), seed: int = 0,
                       views: Sequence[str] = VIEWS, image_format: str = "jpg", far_cars: float = 0.0) -> Path:
    """Write ``out_dir/images/*.jpg`` (quality 95, or png) and a COCO ``out_dir/annotations.json``
    (bbox xywh; iscrowd 1 marks ignore regions; one category, car) and return the annotation path.

    A folder already holding this very dataset (same parameters, recorded in synthetic.json) is reused
    as is; a non-empty folder holding anything else raises DetectorError rather than being overwritten.
    """
    out_dir = Path(out_dir)
    if image_format not in ("jpg", "png"):
        raise DetectorError(f"synthetic image_format must be 'jpg' or 'png', got {image_format!r}")
    _check_far_cars(far_cars)  # before anything is written, so a refused call leaves no folder behind
    params = {"version": _VERSION, "num_images": int(num_images), "size": [int(v) for v in size], "seed": int(seed),
              "views": list(views), "image_format": image_format}
    if far_cars:  # recorded only when set, so a folder rendered before the option existed is still recognized
        params["far_cars"] = float(far_cars)
    annotation_path, params_path = out_dir / "annotations.json", out_dir / "synthetic.json"
    if _holds_dataset(out_dir, params):
        return annotation_path
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    options = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    for index, render in enumerate(iter_scenes(num_images, size, seed, views, far_cars)):
        file_name = f"images/{index:06d}.{image_format}"
        cv2.imwrite(str(out_dir / file_name), cv2.cvtColor(render.image, cv2.COLOR_RGB2BGR), options)
        entries.append((file_name, *render.image.shape[:2], render.boxes, render.ignore))
    annotation_path.write_text(json.dumps(_coco_annotations(entries), indent=1, sort_keys=True))
    params_path.write_text(json.dumps(params, indent=1, sort_keys=True))  # written last: marks a complete dataset
    return annotation_path


def render_video(path: Path, num_frames: int = 60, size: tuple[int, int] = (320, 480), fps: float = 10,
                 seed: int = 0, view: str = "driver", stop_and_go: bool = False, occlusions: bool = False) -> Path:
    """Write an mp4 (codec mp4v) of ``num_frames`` frames of ``size`` (height, width) in which cars move
    smoothly and keep their identities, plus ``path.with_suffix(".json")``: per frame, the ground-truth
    boxes (pixel xyxy), their track ids and the ignore regions. Returns ``path``.

    ``stop_and_go``: traffic slows to a standstill for a few seconds and drives off again (the driver's view: the ego
    and every car in its direction; top-down: one lane). ``occlusions``: cars hide fully for a few frames and are
    seen again (the driver's view: a parked car behind a passing van; top-down: cars under a bridge). Both are off by
    default, which keeps every seed's video as it was; the sidecar's ``traffic`` says when and which cars."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise DetectorError(f"synthetic video path must end in .mp4, got {path}")
    if num_frames < 1 or fps <= 0:
        raise DetectorError(f"synthetic video needs num_frames >= 1 and fps > 0, got {num_frames} and {fps}")
    rng = np.random.default_rng(seed)
    world = _world(rng, size, view, num_frames / fps, stop_and_go, occlusions)
    height, width = world.size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise DetectorError(f"cannot open {path} for writing an mp4v video")
    frames = []
    try:
        for index in range(num_frames):
            render = _render_frame(world, index / fps, rng)
            writer.write(cv2.cvtColor(render.image, cv2.COLOR_RGB2BGR))
            frames.append({"index": index, "boxes": render.boxes.tolist(), "track_ids": render.track_ids.tolist(),
                           "ignore": render.ignore.tolist()})
    finally:
        writer.release()
    sidecar = {"video": path.name, "view": view, "fps": fps, "num_frames": num_frames, "width": width,
               "height": height, "seed": seed, "box_format": "xyxy pixels", "traffic": world.traffic(),
               "frames": frames}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    return path
