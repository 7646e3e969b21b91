"""Pure box functions and the box coder.

Inside the package boxes are (N, 4) float32 absolute-pixel ``x1, y1, x2, y2``. Other conventions
(COCO ``xywh``, YOLO normalized ``cx cy w h``) are converted here, at the I/O edge, by named functions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import box_area, box_iou

__all__ = [
    "BoxCoder",
    "box_area",
    "box_ioa",
    "box_iou",
    "clip_boxes",
    "cxcywh_norm_to_xyxy",
    "nondegenerate",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh_norm",
    "xyxy_to_xywh",
]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO (N, 4) ``x, y, w, h`` -> (N, 4) ``x1, y1, x2, y2`` (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) ``x1, y1, x2, y2`` -> COCO (N, 4) ``x, y, w, h`` (float32)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def cxcywh_norm_to_xyxy(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """YOLO (N, 4) normalized ``cx, cy, w, h`` -> (N, 4) pixel ``x1, y1, x2, y2`` (float32)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float64)
    cx, cy, w, h = (boxes * scale).T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def xyxy_to_cxcywh_norm(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) pixel ``x1, y1, x2, y2`` -> YOLO (N, 4) normalized ``cx, cy, w, h`` (float64)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    out = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)
    return out / np.array([width, height, width, height], dtype=np.float64)


def clip_boxes(boxes: torch.Tensor, image_size: tuple[int, int] | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Clip (..., 4) xyxy boxes to an image of (height, width) (as torchvision.ops.clip_boxes_to_image). The size may
    be 0-dim tensors (an image's traced shape when exporting to ONNX) as well as ints."""
    height, width = (torch.as_tensor(v, dtype=boxes.dtype, device=boxes.device) for v in image_size)
    zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
    xs = torch.minimum(torch.maximum(boxes[..., 0::2], zero), width)
    ys = torch.minimum(torch.maximum(boxes[..., 1::2], zero), height)
    # (..., 2) and (..., 2) -> (..., 2, 2) [[x1, y1], [x2, y2]] -> (..., 4) x1, y1, x2, y2
    return torch.stack((xs, ys), dim=-1).reshape(boxes.shape)


def nondegenerate(boxes: torch.Tensor, min_size: float = 1e-3) -> torch.Tensor:
    """(N,) bool: boxes whose width and height both exceed ``min_size``."""
    return ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)


def box_ioa(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(N, G) intersection over the area of ``boxes``: how much of each box lies in each region."""
    top_left = torch.max(boxes[:, None, :2], regions[None, :, :2])
    bottom_right = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return intersection / box_area(boxes).clamp(min=1e-6)[:, None]


class BoxCoder:
    """Encodes boxes as deltas ``(dx, dy, dw, dh)`` relative to reference boxes, and back (R-CNN parametrization).

    ``weights`` scale the deltas so the regression targets have roughly unit variance
    (Fast R-CNN uses (10, 10, 5, 5) for the box head and (1, 1, 1, 1) for the RPN).
    """

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)) -> None:
        self.weights = weights
        self.clamp = math.log(1000.0 / 16)  # no box grows more than 62.5x in one decode

    def encode(self, gt_boxes: torch.Tensor, ref_boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) xyxy gt boxes and (N, 4) xyxy reference boxes -> (N, 4) deltas."""
        wx, wy, ww, wh = self.weights
        ref_w = ref_boxes[:, 2] - ref_boxes[:, 0]
        ref_h = ref_boxes[:, 3] - ref_boxes[:, 1]
        ref_cx = ref_boxes[:, 0] + 0.5 * ref_w
        ref_cy = ref_boxes[:, 1] + 0.5 * ref_h
        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1] + 0.5 * gt_h
        return torch.stack(
            [
                wx * (gt_cx - ref_cx) / ref_w,
                wy * (gt_cy - ref_cy) / ref_h,
                ww * torch.log(gt_w / ref_w),
                wh * torch.log(gt_h / ref_h),
            ],
            dim=1,
        )

    def decode(self, deltas: torch.Tensor, ref_boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4*k) deltas and (N, 4) xyxy reference boxes -> (N, 4*k) xyxy boxes (k boxes per reference)."""
        ref_boxes = ref_boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ref_w = (ref_boxes[:, 2] - ref_boxes[:, 0])[:, None]
        ref_h = (ref_boxes[:, 3] - ref_boxes[:, 1])[:, None]
        ref_cx = ref_boxes[:, 0, None] + 0.5 * ref_w
        ref_cy = ref_boxes[:, 1, None] + 0.5 * ref_h
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.clamp)
        cx, cy = dx * ref_w + ref_cx, dy * ref_h + ref_cy
        w, h = torch.exp(dw) * ref_w, torch.exp(dh) * ref_h
        # (N, k) each -> (N, k, 4) -> (N, 4*k)
        boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)
        return boxes.reshape(deltas.shape[0], deltas.shape[1])  # explicit width: -1 is ambiguous when N == 0
