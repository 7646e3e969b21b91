"""Robust image loading: any common image file -> ``(H, W, 3)`` uint8 RGB, plus cheap size reads.

Real datasets mix grayscale scans, RGBA screenshots and 16-bit PNGs with ordinary JPEGs. Everything
downstream (augmentation, the backbone's ImageNet normalization) expects 8-bit RGB, so the conversion
happens here, once, and corrupt or missing files fail with one sentence naming the file.

Pixels are returned as stored: EXIF orientation is NOT applied, by both `load_image` (OpenCV
``IMREAD_UNCHANGED``) and `read_image_size` (PIL header), so sizes, pixels and annotations agree.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from detector.errors import DetectorError

__all__ = ["IMAGE_EXTENSIONS", "check_image_file", "list_images", "load_image", "load_image_with_info", "read_image_size", "to_rgb8"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_UINT16_TO_UINT8 = 257  # 65535 / 255: maps the full 16-bit range exactly onto 0..255


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (extension matched case-insensitively), sorted by path."""
    folder = Path(folder)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise DetectorError(f"image file not found: {path}")


def _decode_error(path: Path) -> DetectorError:
    return DetectorError(f"cannot decode image {path} (corrupt or not an image)")


def _to_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """Scale a uint8 / uint16 / float image of any channel count to uint8."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # round to nearest rather than truncate, so 257 * v maps back to exactly v
        return ((image.astype(np.uint32) + _UINT16_TO_UINT8 // 2) // _UINT16_TO_UINT8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        # float images (TIFF / EXR) are conventionally in [0, 1]
        return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise DetectorError(f"image {path} has unsupported pixel type {image.dtype} (expected 8/16-bit or float)")


def _composite_on_black(bgra: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 BGRA -> (H, W, 3) uint8 BGR, colour weighted by alpha.

    Fully transparent pixels often hold arbitrary colour that was never meant to be seen; weighting by
    alpha turns them black instead of leaking that colour into training images.
    """
    alpha = bgra[:, :, 3:4].astype(np.uint16)
    return ((bgra[:, :, :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


def to_rgb8(decoded: np.ndarray, path: str | Path = "<array>") -> tuple[np.ndarray, bool]:
    """An image as OpenCV decodes it (BGR order, any depth/channels) -> ((H, W, 3) uint8 RGB, converted).

    ``converted`` is True when the source was not already 8-bit 3-channel colour (grayscale, RGBA or
    16-bit), so readers can count such images in ``DatasetReport.converted_images``.
    """
    path = Path(path)
    image = _to_uint8(decoded, path)
    converted = decoded.dtype != np.uint8
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # (H, W, 1) -> (H, W)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), True
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise DetectorError(f"image {path} has shape {decoded.shape}, expected (H, W), (H, W, 3) or (H, W, 4)")
    if image.shape[2] == 4:
        image, converted = _composite_on_black(image), True
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), converted


def load_image_with_info(path: str | Path) -> tuple[np.ndarray, bool]:
    """Decode ``path`` -> ((H, W, 3) uint8 RGB, converted); see `to_rgb8` for ``converted``.

    Reads the bytes with NumPy and decodes them with ``cv2.imdecode`` so that paths OpenCV's own file
    reader mishandles (non-ASCII names on Windows) still work.
    """
    path = Path(path)
    _check_exists(path)
    data = np.fromfile(str(path), dtype=np.uint8)
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if decoded is None or decoded.size == 0:
        raise _decode_error(path)
    return to_rgb8(decoded, path)


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file -> (H, W, 3) uint8 RGB (grayscale, RGBA and 16-bit are converted).

    Raises DetectorError for a missing file or one that cannot be decoded.
    """
    return load_image_with_info(path)[0]


def as_rgb_array(image: str | Path | np.ndarray) -> np.ndarray:
    """What the predictors take: an image path (decoded) or an (H, W, 3) uint8 RGB array (returned as is)."""
    if isinstance(image, (str, Path)):
        image = load_image(image)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DetectorError("predict expects image paths or (H, W, 3) uint8 RGB arrays")
    return image


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image from its header only, without decoding the pixels."""
    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        raise DetectorError(f"image {path} is too large to decode safely ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise _decode_error(path) from error
    if width <= 0 or height <= 0:
        raise _decode_error(path)
    return int(width), int(height)


def check_image_file(path: str | Path) -> str | None:
    """Why an image file cannot be trained on (``"unreadable"``: it cannot be opened; ``"truncated"``: a JPEG cut
    short), or None: a cheap test that readers run on every image, so a bad file is skipped and reported before
    training instead of failing in the middle of an epoch. A JPEG must end with its end-of-image marker, or else
    decode completely (some cameras append data after the marker). Other formats are not decoded here."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(3)
            file.seek(max(0, path.stat().st_size - 2))
            tail = file.read(2)
    except OSError:
        return "unreadable"
    if head == b"\xff\xd8\xff" and tail != b"\xff\xd9":
        try:
            with Image.open(path) as image:
                image.load()
        except Image.DecompressionBombError:
            return None  # large, not broken: read_image_size names the limit
        except (OSError, SyntaxError, ValueError):
            return "truncated"
    return None
