"""Draw every corruption of detector.robustness at every severity on one image, as one labelled picture grid.

One row per corruption; the first column is the clean image, then severities 1 to 5. Tiles are scaled down
(``--tile``: pixels on a tile's longer side) so the grid stays a few megabytes.

    python scripts/corruption_grid.py --image ../shared/data/kitti_tiny/training/image_2/000047.jpeg \
        --image ../shared/data/drone_cars/images/6_1.jpg
    # -> docs/benchmarks/robustness/corruptions_000047.jpg, docs/benchmarks/robustness/corruptions_6_1.jpg
    python scripts/corruption_grid.py --image ../shared/data/kitti_tiny/training/image_2/000047.jpeg \
        --checkpoint runs/kitti_cars/best.pt --out docs/benchmarks/robustness/detections_{stem}.jpg
    # the same grid with the checkpoint's detections (score >= --score-thresh) drawn on every tile
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from detector.data.images import load_image
from detector.errors import DetectorError
from detector.robustness import CORRUPTIONS, SEVERITIES, corrupt, parse_corruptions
from detector.visualize import BACKGROUND_RGB, draw_detections, save_image

DEFAULT_OUT = "docs/benchmarks/robustness/corruptions_{stem}.jpg"
LABEL_HEIGHT = 22  # pixels of the header row (severities) and the per-row name strip
NAME_WIDTH = 118  # pixels of the left column holding each corruption's name


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)


def corruption_grid(image: np.ndarray, names: list[str], tile: int, seed: int = 0, detector=None,
                    score_thresh: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (rows, cols, 3) uint8 grid: a header row, then per corruption its name, the clean
    image and severities 1..5. The image is corrupted at full size, then each tile is scaled so its longer
    side is ``tile`` pixels (so the grid shows the corruption as the detector would see it, shrunk). With
    ``detector`` (a `detector.api.Detector`), its detections on each full-size image are drawn before scaling."""

    def shown(picture: np.ndarray) -> np.ndarray:
        if detector is not None:
            found = detector.predict(picture, score_thresh=score_thresh)
            picture = draw_detections(picture, found.boxes, found.labels, detector.class_names, scores=found.scores,
                                      thickness=max(2, round(2 / scale)))
        return cv2.resize(picture, (tile_w, tile_h), interpolation=cv2.INTER_AREA)

    height, width = image.shape[:2]
    scale = tile / max(height, width)
    tile_w, tile_h = max(1, round(width * scale)), max(1, round(height * scale))
    columns = ["clean"] + [f"severity {s}" for s in SEVERITIES]
    grid = np.empty((LABEL_HEIGHT + len(names) * tile_h, NAME_WIDTH + len(columns) * tile_w, 3), np.uint8)
    grid[:] = BACKGROUND_RGB
    for col, label in enumerate(columns):
        _text(grid, label, (NAME_WIDTH + col * tile_w + 4, LABEL_HEIGHT - 6))
    clean = shown(image)
    for row, name in enumerate(names):
        top = LABEL_HEIGHT + row * tile_h
        _text(grid, name, (4, top + tile_h // 2 + 5))
        tiles = [clean] + [shown(corrupt(image, name, s, seed)) for s in SEVERITIES]
        grid[top:top + tile_h, NAME_WIDTH:] = np.concatenate(tiles, axis=1)  # 1 + 5 tiles side by side
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="append", required=True, help="image to corrupt (repeatable)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output picture; '{{stem}}' is the image's file stem "
                        f"(default {DEFAULT_OUT})")
    parser.add_argument("--corruptions", default="all", help="names to draw, comma-separated (default all)")
    parser.add_argument("--tile", type=int, default=300, help="pixels on a tile's longer side (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="draw this checkpoint's detections on every tile")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="detections drawn (with --checkpoint)")
    args = parser.parse_args(argv)
    try:
        if len(args.image) > 1 and "{stem}" not in args.out:
            raise DetectorError(f"--out '{args.out}' must contain '{{stem}}' when several --image are given")
        if args.tile < 32:
            raise DetectorError(f"--tile must be at least 32 pixels, got {args.tile}")
        names = list(dict.fromkeys(name for name, _ in parse_corruptions(args.corruptions)))
        detector = None
        if args.checkpoint:
            from detector.api import Detector

            detector = Detector.load(args.checkpoint)
        for path in args.image:
            grid = corruption_grid(load_image(path), names or list(CORRUPTIONS), args.tile, args.seed, detector,
                                   args.score_thresh)
            out = save_image(args.out.format(stem=Path(path).stem), grid)
            print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {grid.shape[1]}x{grid.shape[0]})")
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
