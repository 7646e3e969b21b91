"""Print a config's train / val / test splits and check that no image of one nearly duplicates one of another.

    python scripts/check_splits.py configs/drone_cars.yaml configs/kitti_cars.yaml

Exits 1 when a pair of images from different splits has thumbnail correlation >= 0.9 (detector/data/splits.py).
"""

from __future__ import annotations

import argparse
import sys

from detector.config import load_config
from detector.data.build import SPLITS, build_split
from detector.data.splits import cross_split_correlation, format_split_report
from detector.structures import DetectorError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    args = parser.parse_args(argv)
    clean = True
    try:
        for path in args.configs:
            config = load_config(path)
            splits = {name: build_split(config, name) for name in SPLITS if name != "test" or config.data.test_filter}
            highest, pairs = cross_split_correlation(splits)
            print(f"{path}\n{format_split_report(splits, highest, pairs)}\n")
            clean &= not pairs
    except DetectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
