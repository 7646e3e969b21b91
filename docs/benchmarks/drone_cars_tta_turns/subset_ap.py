"""COCO AP of `detector eval` outputs on each part of the drone test block: tile group 7 and the Drone2 frames.

    python docs/benchmarks/drone_cars_tta_turns/subset_ap.py OUT.json EVAL_FOLDER [EVAL_FOLDER ...]

EVAL_FOLDER: what `detector eval ... --split test --out EVAL_FOLDER` wrote (ground_truth.json, detections.json);
image ids are mapped back to file names by reading the test block of configs/drone_cars.yaml as eval did.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.config import load_config
from detector.data.build import filter_records, read_split

SUBSETS = {"tiles 7_*": r"^7_", "Drone2 frames 529-579": r"^Drone2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    config = load_config("configs/drone_cars.yaml", [])
    dataset = filter_records(read_split(config.data, config.data.train_path, config.model.class_names),
                             config.data.test_filter, True, "data.test_filter")
    names = {record.image_id: record.image_path.name for record in dataset.records}
    results = {}
    for folder in args.folders:
        truth = COCO()
        truth.dataset = json.loads((Path(folder) / "ground_truth.json").read_text())
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
            truth.createIndex()
            found = truth.loadRes(str(Path(folder) / "detections.json"))
        for subset, pattern in SUBSETS.items():
            evaluation = COCOeval(truth, found, "bbox")
            evaluation.params.imgIds = [i for i, name in names.items() if re.match(pattern, name)]
            with contextlib.redirect_stdout(io.StringIO()):
                evaluation.evaluate()
                evaluation.accumulate()
                evaluation.summarize()
            results[f"{folder} | {subset}"] = {"images": len(evaluation.params.imgIds),
                                               **{k: round(float(evaluation.stats[i]), 4)
                                                  for i, k in enumerate(("AP", "AP50", "AP75"))}}
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
