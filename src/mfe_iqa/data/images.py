"""Image decoding to 8-bit RGB and the cheap integrity checks run on every image at set-up.

Decoding uses OpenCV (``cv2.imread``), measured faster than PIL on this project's inputs (see
README "Data"), with PIL as a fallback for formats OpenCV cannot read. Every mode becomes
(H, W, 3) uint8 RGB: grayscale is replicated, palette images are expanded, the alpha channel of
RGBA / LA images is dropped (as PIL's ``convert("RGB")`` does), 16-bit images keep their 8 most
significant bits, CMYK JPEGs are converted to RGB. EXIF orientation is ignored, as in the PIL-based
loaders the published IQA results come from (the raters saw the stored pixel grid).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from mfe_iqa.errors import UserError

# OpenCV >= 4.10 decodes straight to RGB; older builds decode BGR and we swap the channels.
_HAS_RGB_FLAG = hasattr(cv2, "IMREAD_COLOR_RGB")
_READ_FLAGS = (cv2.IMREAD_COLOR_RGB if _HAS_RGB_FLAG else cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class ImageDecodeError(UserError, OSError):
    """An image file that neither OpenCV nor PIL can decode."""


def _pil_to_rgb(path: str | os.PathLike) -> np.ndarray:
    """PIL fallback with the same mode rules as the OpenCV path."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.uint32)
            arr = (arr >> 8).astype(np.uint8) if arr.max() > 255 else arr.astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


def load_rgb(path: str | os.PathLike, short_side: int | None = None) -> np.ndarray:
    """Decode ``path`` to (H, W, 3) uint8 RGB; optionally resize so the shorter side is ``short_side``.

    With ``short_side``, large JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (much
    faster than a full decode) as long as the reduced image keeps a short side >= ``short_side``;
    the rest of the way is an area (down) or cubic (up) resize.
    """
    path = os.fspath(path)
    reduced = 1
    if short_side is not None and path.lower().endswith((".jpg", ".jpeg")):
        w, h = image_size(path)
        reduced = next((f for f in (8, 4, 2) if min(w, h) // f >= short_side), 1)
    if reduced > 1:
        image = cv2.imread(path, _REDUCED_FLAGS[reduced] | cv2.IMREAD_IGNORE_ORIENTATION)  # BGR
        swap = True
    else:
        image = cv2.imread(path, _READ_FLAGS)
        swap = not _HAS_RGB_FLAG
    if image is not None and swap:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image is None:
        try:
            image = _pil_to_rgb(path)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ImageDecodeError(f"cannot decode image {path}: {err}") from err
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if short_side is not None:
        image = resize_short_side(image, short_side)
    return np.ascontiguousarray(image)


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize (H, W, C) so that min(H, W) == short_side, keeping the aspect ratio."""
    h, w = image.shape[:2]
    if min(h, w) == short_side:
        return image
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))  # cv2 wants (w, h)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, size, interpolation=interp)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header only (no pixel decode)."""
    with Image.open(path) as im:
        return im.size


def _trailer_problem(path: str, fmt: str, size: int) -> str | None:
    """Format-specific truncation test that reads only the end of the file."""
    with open(path, "rb") as f:
        if fmt == "JPEG":
            f.seek(max(0, size - 1024))
            # A complete JPEG ends with the EOI marker FFD9 (cameras may append a few padding bytes).
            return None if b"\xff\xd9" in f.read() else "truncated JPEG (no end-of-image marker)"
        if fmt == "PNG":
            f.seek(max(0, size - 64))
            return None if b"IEND" in f.read() else "truncated PNG (no IEND chunk)"
        if fmt == "BMP":
            head = f.read(54)
            if len(head) < 34 or int.from_bytes(head[14:18], "little") < 40:
                return None  # old OS/2 header: no size promise to test
            offset = int.from_bytes(head[10:14], "little")
            width = int.from_bytes(head[18:22], "little", signed=True)
            height = abs(int.from_bytes(head[22:26], "little", signed=True))
            bits = int.from_bytes(head[28:30], "little")
            compression = int.from_bytes(head[30:34], "little")
            if compression in (0, 3):  # BI_RGB / BI_BITFIELDS: rows are stored uncompressed
                needed = offset + ((abs(width) * bits + 31) // 32) * 4 * height
                if size < needed:
                    return f"truncated BMP ({size} bytes, its header promises {needed})"
    return None


def check_image(path: str | os.PathLike, deep: bool = False) -> str | None:
    """Return why ``path`` is not a usable image, or None when it is.

    The default check is cheap: the file exists and is non-empty, PIL parses its header (format,
    size, mode), and the file is long enough: JPEG ends with its end-of-image marker, PNG with IEND,
    uncompressed BMP holds all the pixel bytes its header promises. ``deep=True`` decodes the
    pixels as well (slow: use it when the cheap check is not trusted).
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as err:
        return f"cannot stat file: {err}"
    if size == 0:
        return "zero-byte file"
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
            if w <= 0 or h <= 0:
                return f"invalid image size {w}x{h}"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        return f"unreadable image header: {err}"
    problem = _trailer_problem(path, fmt, size)
    if problem is not None:
        return problem
    if deep:
        try:
            load_rgb(path)
        except ImageDecodeError as err:
            return str(err)
    return None
