"""What the drone test block's tile group 7 loses (docs/BENCHMARKS.md, issue 11): per-part error counts of a scored
`detector eval` folder, long vehicles per block from the labels, and a picture of chosen tiles. A diagnosis made after
the test block was scored once: no setting was chosen from it.

    python docs/benchmarks/drone_cars_tta_turns/group7_errors.py OUT_PREFIX EVAL_FOLDER [...] [--split val]
        [--tiles TILE ...]

EVAL_FOLDER: what `detector eval ... --split test|val --out EVAL_FOLDER` wrote. Writes OUT_PREFIX.json (errors per
EVAL_FOLDER, per part of the block: its tile group and its Drone2 frames) and, with --tiles, OUT_PREFIX.jpg: those
tiles with the first folder's detections (labels green, detections with score >= 0.5 red with their score).
A detection matches the unmatched label of highest IoU (>= 0.5), in descending score order, as COCO does at IoU 0.5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.boxes import box_iou, xywh_to_xyxy
from detector.config import load_config
from detector.data.build import filter_records, read_split

SCORE = 0.5
LONG = 200  # px at 640: a bus or a truck (the car labels' long side: median 93-95 px in every block)


def xyxy(coco_boxes: list[list[float]]) -> torch.Tensor:
    return torch.from_numpy(xywh_to_xyxy(np.asarray(coco_boxes, np.float32)))


def long_sides(boxes: np.ndarray | torch.Tensor, scale: float = 1.0) -> np.ndarray:
    """The long side of each (N, 4) xyxy box, times ``scale`` (to pixels at 640)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (boxes[:, 2:] - boxes[:, :2]).max(1) * scale


def errors(labels: torch.Tensor, found: torch.Tensor) -> dict[str, int]:
    """Labels missed at IoU 0.5 (and how many of them are long vehicles), detections matching no label, and matches
    under IoU 0.75 (loose); boxes at 640 px."""
    iou = box_iou(found, labels) if len(found) and len(labels) else torch.zeros((len(found), len(labels)))
    free, loose, extra = torch.ones(len(labels), dtype=torch.bool), 0, 0
    for row in iou:
        best = int(torch.argmax(torch.where(free, row, -1.0))) if len(labels) else -1
        if best >= 0 and free[best] and row[best] >= 0.5:
            free[best] = False
            loose += int(row[best] < 0.75)
        else:
            extra += 1
    long = torch.from_numpy(long_sides(labels) >= LONG)
    return {"labels": len(labels), "missed": int(free.sum()), "missed long vehicles": int((free & long).sum()),
            "false": extra, "loose": loose}


def draw(path: Path, labels: torch.Tensor, boxes: torch.Tensor, kept: list[dict]) -> np.ndarray:
    image = cv2.imread(str(path))
    for box in labels.int().tolist():
        cv2.rectangle(image, tuple(box[:2]), tuple(box[2:]), (0, 255, 0), 2)
    for box, detection in zip(boxes.int().tolist(), kept):
        cv2.rectangle(image, tuple(box[:2]), tuple(box[2:]), (0, 0, 255), 1)
        cv2.putText(image, f"{detection['score']:.2f}", (box[0], box[1] - 3), 0, 0.45, (0, 0, 255), 1)
    return cv2.resize(image, (640, 640))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_prefix")
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="the block the folders scored")
    parser.add_argument("--tiles", nargs="+", default=[])
    args = parser.parse_args()
    config = load_config("configs/drone_cars.yaml", [])
    records = read_split(config.data, config.data.train_path, config.model.class_names)
    report: dict = {"long vehicles (label long side >= 200 px at 640)": {}}
    for split, pattern in (("train", config.data.train_filter), ("val", config.data.val_filter),
                           ("test", config.data.test_filter)):
        sides = np.concatenate([long_sides(record.boxes, 640 / max(record.height, record.width)) for record in
                                filter_records(records, pattern, True, f"data.{split}_filter").records])
        report["long vehicles (label long side >= 200 px at 640)"][split] = {
            "labels": len(sides), "long": int((sides >= LONG).sum()), "share": round(float((sides >= LONG).mean()), 4)}
    block = filter_records(records, getattr(config.data, f"{args.split}_filter"), True, f"data.{args.split}_filter")
    by_id = {record.image_id: record for record in block.records}
    pictures: list[tuple[int, np.ndarray]] = []
    for folder in args.folders:
        if missing := [n for n in ("ground_truth.json", "detections.json") if not (Path(folder) / n).is_file()]:
            raise SystemExit(f"group7_errors.py: {folder} has no {' or '.join(missing)}; expected the --out folder "
                             "of a `detector eval` run")
        truth = json.loads((Path(folder) / "ground_truth.json").read_text())
        found = json.loads((Path(folder) / "detections.json").read_text())
        parts: dict[str, dict[str, int]] = {}
        for image_id, record in by_id.items():
            labels = xyxy([a["bbox"] for a in truth["annotations"]
                           if a["image_id"] == image_id and not a.get("iscrowd")])
            kept = sorted((d for d in found if d["image_id"] == image_id and d["score"] >= SCORE),
                          key=lambda d: -d["score"])
            boxes = xyxy([d["bbox"] for d in kept])
            name = record.image_path.name
            part = parts.setdefault(f"tiles {name[0]}_*" if name[0].isdigit() else "Drone2 frames", {})
            for key, value in errors(labels, boxes).items():
                part[key] = part.get(key, 0) + value
            if folder == args.folders[0] and record.image_path.name in args.tiles:
                picture = draw(record.image_path, labels, boxes, kept)
                pictures.append((args.tiles.index(record.image_path.name), picture))
        report[f"errors at score >= {SCORE} ({folder})"] = parts
    Path(f"{args.out_prefix}.json").write_text(json.dumps(report, indent=2) + "\n")
    if pictures:
        cv2.imwrite(f"{args.out_prefix}.jpg", cv2.hconcat([p for _, p in sorted(pictures, key=lambda t: t[0])]),
                    [cv2.IMWRITE_JPEG_QUALITY, 80])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
