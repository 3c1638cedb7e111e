"""Label Studio's smart tools: the regions of a ``context`` turned into one brush mask.

A key point gives the pixels within a colour range of the clicked one, a rectangle the object
inside it (Mask R-CNN when a segmenter is loaded, else a colour-based fallback). Positive
regions add to the mask, negative ones (``is_positive`` false) cut it out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from robustar_ls.explain.interactive import box_object_mask, colour_range_mask
from robustar_ls.labels import SPURIOUS_LABEL
from robustar_ls.models.segmenter import Segmenter

log = logging.getLogger(__name__)


def context_mask(
    image: Image.Image,
    regions: Iterable[Any],
    segmenter: Segmenter | None,
    task_id: str = "?",
) -> tuple[np.ndarray, str | None]:
    """The union of the positive regions' masks minus the negative ones, and the first label.

    A region that cannot be read (or whose model fails) is logged and skipped; the others count.
    """
    width, height = image.size
    rgb = np.asarray(image)
    add = np.zeros((height, width), dtype=bool)
    remove = np.zeros((height, width), dtype=bool)
    label = None
    for region in regions:
        try:
            mask, chosen = region_mask(region, image, rgb, segmenter)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            log.warning("task %s: ignoring a context region: %s", task_id, err)
            continue
        except Exception:  # e.g. the segmenter failing: this region only
            log.exception("task %s: a context region failed", task_id)
            continue
        if mask is None:
            continue
        label = label or chosen
        if region.get("is_positive", True) in (False, 0, "false"):
            remove |= mask
        else:
            add |= mask
    return add & ~remove, label


def region_mask(
    region: dict[str, Any], image: Image.Image, rgb: np.ndarray, segmenter: Segmenter | None
) -> tuple[np.ndarray | None, str | None]:
    """The mask of one key point or rectangle region and its label; (None, None) otherwise."""
    kind = region.get("type")
    value = region["value"]
    width, height = image.size
    labels = value.get(kind) or value.get("labels") or [None]
    chosen = labels[0] if isinstance(labels, list) and labels else None
    if kind == "keypointlabels":
        x = _clip(float(value["x"]) * width / 100.0, width)
        y = _clip(float(value["y"]) * height / 100.0, height)
        return colour_range_mask(rgb, x, y), chosen
    if kind == "rectanglelabels":
        # Pixel edges (x1, y1 exclusive); rounded so float noise never widens the box.
        x0 = round(float(value["x"]) * width / 100.0, 6)
        y0 = round(float(value["y"]) * height / 100.0, 6)
        x1 = round(x0 + float(value["width"]) * width / 100.0, 6)
        y1 = round(y0 + float(value["height"]) * height / 100.0, 6)
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        return box_object_mask(image, box, segmenter), chosen
    return None, None


def brush_label(chosen: str | None, labels: Sequence[str]) -> str:
    """The region's own label when the brush has it, else "Spurious" (or the brush's first)."""
    if chosen in labels:
        return str(chosen)
    return SPURIOUS_LABEL if SPURIOUS_LABEL in labels or not labels else labels[0]


def _clip(value: float, size: int) -> int:
    return int(min(max(value, 0), size - 1))
