"""Label Studio's smart tools: a ``/predict`` with a ``context`` gets, per task, the context's
regions turned into one brush region.

A key point gives the pixels within a colour range of the clicked one, a rectangle the object
inside it (Mask R-CNN when a segmenter is loaded, else a colour-based fallback). Positive
regions add to the mask, negative ones (``is_positive`` false) cut it out. The mask comes back
at the image's displayed size as one brush region (:func:`interactive_prediction`); a task whose
image cannot be fetched, or whose regions select nothing, gets an empty result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from robustar_ls.backend.fetching import TaskError, image_ref, task_id
from robustar_ls.backend.images import ImageFetcher, ImageFetchError
from robustar_ls.backend.outputs import upscale_mask
from robustar_ls.backend.pacing import StageTimer
from robustar_ls.explain.interactive import box_object_mask, colour_range_mask
from robustar_ls.labels import SPURIOUS_LABEL
from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.config import LabelConfigTags
from robustar_ls.labelstudio.results import BrushRegion, Prediction
from robustar_ls.models.maskrcnn import MaskRCNNSegmenter

log = logging.getLogger(__name__)


def interactive_prediction(
    task: dict[str, Any],
    regions: list[dict[str, Any]],
    tags: LabelConfigTags,
    version: str,
    *,
    fetcher: ImageFetcher,
    segmenter: MaskRCNNSegmenter | None,
    timer: StageTimer,
) -> Prediction:
    """A key point → colour-range mask; a rectangle → object mask; as one brush region."""
    empty = Prediction(model_version=version, score=None, result=[])
    if not tags.brush:
        log.warning("interactive request, but the label config has no <BrushLabels> tag")
        return empty
    try:
        item = fetcher.fetch(image_ref(task, tags.image_value))
    except (ImageFetchError, TaskError) as err:
        log.warning("task %s: no interactive result: %s", task_id(task), err)
        return empty
    mask, chosen = context_mask(item.image, regions, segmenter, task_id(task))
    if not mask.any():
        return empty
    label = brush_label(chosen, list(tags.brush_labels or ()))
    with timer("encoding"):
        mask = upscale_mask(mask, item.original_size)
        rle = mask_to_rle(mask.astype(np.uint8) * 255)
    width, height = item.original_size
    region = BrushRegion(tags.brush, tags.image, rle, label, width, height)
    return Prediction(model_version=version, score=1.0, result=[region])


def context_mask(
    image: Image.Image,
    regions: Iterable[Any],
    segmenter: MaskRCNNSegmenter | None,
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
    region: dict[str, Any], image: Image.Image, rgb: np.ndarray, segmenter: MaskRCNNSegmenter | None
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
