"""COCO AP of `detector eval` outputs on each part of the drone test block: tile group 7 and the Drone2 frames.

    python docs/benchmarks/drone_cars_tta_turns/subset_ap.py OUT.json EVAL_FOLDER [EVAL_FOLDER ...]

EVAL_FOLDER: what `detector eval ... --split test --out EVAL_FOLDER` wrote (ground_truth.json, detections.json);
image ids are mapped back to file names by reading the test block of configs/drone_cars.yaml as eval did.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from detector.config import load_config
from detector.data.build import filter_records, read_split
from detector.evaluation import run_coco_eval

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
        truth = json.loads((Path(folder) / "ground_truth.json").read_text())
        found = json.loads((Path(folder) / "detections.json").read_text())
        for subset, pattern in SUBSETS.items():
            ids = {i for i, name in names.items() if re.match(pattern, name)}
            # the project's COCO evaluation (detector.evaluation) on that part's images alone
            part = {**truth, "images": [image for image in truth["images"] if image["id"] in ids],
                    "annotations": [a for a in truth["annotations"] if a["image_id"] in ids]}
            evaluation, _ = run_coco_eval(part, [d for d in found if d["image_id"] in ids])
            results[f"{folder} | {subset}"] = {"images": len(ids), **{
                key: round(float(evaluation.stats[i]), 4) for i, key in enumerate(("AP", "AP50", "AP75"))}}
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
