"""Draw a checkpoint's detections on images of one split into one small grid picture (for docs and the README).

    python scripts/predictions_grid.py runs/drone_cars/best.pt -c configs/drone_cars.yaml --split test \
        --out docs/benchmarks/drone_cars_test/predictions.jpg [model.rpn_post_nms_top_n_test=75 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from detector.api import Detector
from detector.config import load_config
from detector.data.build import SPLITS, build_split
from detector.data.images import load_image
from detector.structures import DetectorError
from detector.visualize import draw_detections, image_grid, save_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("-c", "--config", required=True, help="config whose split is drawn")
    parser.add_argument("--split", choices=SPLITS, default="val", help="the config's split to draw (default val)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--cell", type=int, default=320, help="grid cell size in pixels")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="inference settings for the checkpoint, e.g. model.rpn_post_nms_top_n_test=75")
    args = parser.parse_intermixed_args(argv)
    try:
        detector = Detector.load(args.checkpoint, overrides=args.overrides)
        split = build_split(load_config(args.config), args.split)
        step = max(len(split.records) // args.num, 1)
        records = split.records[::step][: args.num]
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
