"""Draw a checkpoint's detections on validation images into one small PNG grid (for docs and the README).

    python scripts/predictions_grid.py runs/drone_cars/best.pt -c configs/drone_cars.yaml --out docs/benchmarks/drone_cars/predictions.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from detector.api import Detector
from detector.config import load_config
from detector.data.build import build_datasets
from detector.data.images import load_image
from detector.structures import DetectorError
from detector.visualize import draw_detections, image_grid, save_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("-c", "--config", required=True, help="config whose validation split is drawn")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--cell", type=int, default=320, help="grid cell size in pixels")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        detector = Detector.load(args.checkpoint)
        _, val = build_datasets(load_config(args.config))
        step = max(len(val.records) // args.num, 1)
        records = val.records[::step][: args.num]
        cells = []
        for record in records:
            image = load_image(record.image_path)
            found = detector.predict(image, score_thresh=args.score_thresh)
            drawn = draw_detections(image, found.boxes.numpy(), found.labels.numpy(), detector.class_names,
                                    scores=found.scores.numpy(), ignore=record.ignore)
            cells.append(np.ascontiguousarray(drawn))
        out = save_image(Path(args.out), image_grid(cells, args.cols, args.cell))
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
