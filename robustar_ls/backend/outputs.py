"""What the models say about one image, and the Label Studio prediction made from it.

:class:`ImageOutputs` holds the model outputs independent of the labeling config, so they can be
cached per (model version, image); :func:`to_prediction` turns them into the regions a given
config asks for: the summary text, the "Spurious" and the "Model attention" brush regions.
Masks are computed on a reduced image and brought to the displayed size (:func:`upscale_mask`)
before they are encoded as Label Studio brush RLE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robustar_ls.data.folders import SPLITS
from robustar_ls.explain.saliency import attention_mask
from robustar_ls.labels import ATTENTION_LABEL, SPURIOUS_LABEL
from robustar_ls.labelstudio.brush import mask_to_rle
from robustar_ls.labelstudio.config import LabelConfigTags
from robustar_ls.labelstudio.results import BrushRegion, Prediction, TextAreaResult


@dataclass(frozen=True)
class ImageOutputs:
    """What the models say about one image, independent of the label config (cacheable)."""

    probs: np.ndarray  # (num_classes,) softmax
    width: int
    height: int
    attention_rle: list[int]
    spurious_rle: list[int] | None  # None: no segmenter
    spurious_score: float | None = None  # the learned segmenter's confidence in its mask
    spurious_source: str = ""  # "learned segmenter v3-…" or "Mask R-CNN"


def upscale_mask(mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """A bool mask computed on a reduced image, brought to the displayed ``(width, height)``."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    width, height = size
    if mask.shape == (height, width):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 127


def image_outputs(
    probs: np.ndarray,
    saliency: np.ndarray,
    spurious: np.ndarray | None,
    top_fraction: float,
    spurious_score: float | None = None,
    spurious_source: str = "",
) -> ImageOutputs:
    """One image's outputs: ``saliency`` at the image's size, ``spurious`` a bool mask or None
    (made by ``spurious_source``, with confidence ``spurious_score`` when it has one)."""
    height, width = saliency.shape
    return ImageOutputs(
        probs=probs,
        width=width,
        height=height,
        attention_rle=mask_to_rle(attention_mask(saliency, top_fraction)),
        spurious_rle=None
        if spurious is None
        else mask_to_rle(np.asarray(spurious, dtype=np.uint8) * 255),
        spurious_score=None if spurious is None else spurious_score,
        spurious_source="" if spurious is None else spurious_source,
    )


def summary_text(
    classes: Sequence[str], probs: np.ndarray, true_class: str | None, spurious_source: str = ""
) -> str:
    """``Predicted: square (0.93) · True: circle · WRONG · Spurious: learned segmenter v3-…``
    (the last part names what made the "Spurious" pre-annotation, when there is one)."""
    index = int(probs.argmax())
    text = f"Predicted: {classes[index]} ({float(probs[index]):.2f})"
    if not true_class:
        text += " · True: unknown"
    else:
        verdict = "correct" if classes[index] == true_class else "WRONG"
        text = f"{text} · True: {true_class} · {verdict}"
    return f"{text} · Spurious: {spurious_source}" if spurious_source else text


def true_class(data: Mapping[str, Any], path: Path | None, classes: Sequence[str]) -> str | None:
    """From task data ``true_class``, else from ``…/<split>/<class>/<file>`` on disk."""
    value = data.get("true_class")
    if isinstance(value, str) and value:
        return value
    if path is not None:
        parent = path.parent
        if parent.name in classes and parent.parent.name in SPLITS:
            return parent.name
    return None


def to_prediction(
    out: ImageOutputs, tags: LabelConfigTags, version: str, summary: str | None
) -> Prediction:
    """The prediction of one image for the tags of one labeling config."""
    result: list[Any] = []
    if tags.summary_textarea and summary is not None:
        result.append(TextAreaResult(tags.summary_textarea, tags.image, summary))
    labels = set(tags.brush_labels or ())
    regions = [
        (SPURIOUS_LABEL, out.spurious_rle, out.spurious_score),
        (ATTENTION_LABEL, out.attention_rle, None),
    ]
    for label, rle, score in regions:
        if tags.brush and rle is not None and label in labels:
            size = (out.width, out.height)
            result.append(BrushRegion(tags.brush, tags.image, rle, label, *size, score=score))
    return Prediction(model_version=version, score=float(out.probs.max()), result=result)
