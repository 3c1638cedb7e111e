"""The annotator's smart tools: a click selects a colour range, a box selects the object in it.

Both take the image as an ``HxWx3`` ``uint8`` array (or a PIL image) and pixel coordinates
(column ``x``, row ``y``; the backend converts Label Studio's percentages), and return a
boolean ``HxW`` mask. Bad input raises ``ValueError`` with a message fit for the user.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from robustar_ls.data.regions import component_at, pixel_box

if TYPE_CHECKING:
    from robustar_ls.models.maskrcnn import MaskRCNNSegmenter

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 24  # max. absolute difference per RGB channel (0..255)


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An ``HxWx3`` ``uint8`` RGB array from a PIL image or an ``HxWx3``/``HxWx4`` array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB image as an HxWx3 uint8 array, got {array.dtype} {array.shape}"
        )
    return array[:, :, :3]


def colour_range_mask(
    image: Image.Image | np.ndarray,
    x: float,
    y: float,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    connected: bool = False,
) -> np.ndarray:
    """Pixels whose colour is within ``tolerance`` of the colour at column ``x``, row ``y``.

    "Within" means every RGB channel differs by at most ``tolerance`` (0 = the exact colour,
    255 = everything). By default the whole image is searched, as the seed's colour-range tool
    does: a background colour is selected wherever it appears, even where the object splits
    it in parts. ``connected=True`` keeps only the 4-connected region around the click.
    Fractional coordinates select the pixel they fall in.
    """
    rgb = as_rgb_array(image)
    height, width = rgb.shape[:2]
    limit = _tolerance(tolerance)
    col, row = _pixel(x, y, width, height)
    seed = rgb[row, col].astype(np.int16)
    mask = np.abs(rgb.astype(np.int16) - seed).max(axis=2) <= limit
    if connected:
        mask = component_at(mask, col, row)
    return mask


def box_object_mask(
    image: Image.Image | np.ndarray,
    box: Sequence[float],
    segmenter: MaskRCNNSegmenter | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> np.ndarray:
    """The object inside ``box`` = ``(x0, y0, x1, y1)`` in pixels (False outside the box).

    With Mask R-CNN: :meth:`~robustar_ls.models.maskrcnn.MaskRCNNSegmenter.box_mask`. Without
    it (no Mask R-CNN weights), or when it finds nothing in the box, the colour fallback
    :func:`colour_box_mask` is used. The box is clipped to the image; an empty, inverted or
    outside box is a ``ValueError``.
    """
    rgb = as_rgb_array(image)
    height, width = rgb.shape[:2]
    clipped = pixel_box(box, width, height)
    _tolerance(tolerance)
    if segmenter is not None:
        pil = (
            image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(rgb))
        )
        mask = segmenter.box_mask(pil, clipped)
        if mask.any():
            return mask
        log.info("the segmenter found no object in box %s; using the colour fallback", clipped)
    return colour_box_mask(rgb, clipped, tolerance)


def colour_box_mask(
    image: Image.Image | np.ndarray, box: Sequence[float], tolerance: float = DEFAULT_TOLERANCE
) -> np.ndarray:
    """No-weights fallback for the box tool: what stands out from the box's border colour.

    The background colour is the per-channel median of the pixels on the box's edge (its
    outermost rows and columns, inside the box); the object is every pixel in the box with a
    channel differing from it by more than ``tolerance``. Works when the user draws the box
    around an object on a roughly uniform background; it cannot tell two objects apart.
    """
    rgb = as_rgb_array(image)
    height, width = rgb.shape[:2]
    limit = _tolerance(tolerance)
    x0, y0, x1, y1 = pixel_box(box, width, height)
    crop = rgb[y0:y1, x0:x1].astype(np.int16)
    edge = np.ones(crop.shape[:2], dtype=bool)
    edge[1:-1, 1:-1] = False
    background = np.median(crop[edge], axis=0)
    out = np.zeros((height, width), dtype=bool)
    out[y0:y1, x0:x1] = np.abs(crop - background).max(axis=2) > limit
    return out


def _tolerance(tolerance: float) -> float:
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 <= value <= 255:
        raise ValueError(f"tolerance must be a number from 0 to 255, got {tolerance!r}")
    return value


def _pixel(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    """The pixel (column, row) a point falls in; ValueError when it is outside the image."""
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        raise ValueError(f"a point must be two numbers (x, y), got {x!r}, {y!r}") from None
    if not (math.isfinite(fx) and math.isfinite(fy)):
        raise ValueError(f"a point must be finite, got ({x!r}, {y!r})")
    col, row = math.floor(fx), math.floor(fy)
    if not (0 <= col < width and 0 <= row < height):
        raise ValueError(
            f"point (x={x}, y={y}) is outside the {width}x{height} image "
            f"(x must be in [0, {width}), y in [0, {height}))"
        )
    return col, row
