"""How one image's detections read as names and JSON, shared by `detector.structures.Detections` (torch tensors)
and `detector.export.ArrayDetections` (numpy arrays, torch-free): both have boxes (D, 4), scores (D,), labels (D,)
in 1..K and class_names, and both kinds of array have ``tolist``."""

from __future__ import annotations


class DetectionsFormat:
    """Mixin for a dataclass with ``boxes``, ``scores``, ``labels`` and ``class_names``."""

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        """Class name of every detection."""
        return [self.class_names[int(label) - 1] if self.class_names else str(int(label)) for label in self.labels]

    def to_list(self) -> list[dict]:
        """JSON-ready list: one dict per detection with box (xyxy), score, label and class name."""
        return [
            {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4), "label": int(label), "class": name}
            for box, score, label, name in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist(), self.names)
        ]
