"""How well a learned spurious segmenter matches reference masks.

Over the training split of a dataset, against a reference mask folder (same layout as the mask
store, e.g. a synthetic dataset's ``oracle_masks/``):

- ``iou_mean``: mean IoU of the predicted mask (probability >= 0.5) with the reference, over
  images whose reference mask is non-empty and that the segmenter was not trained on (``n``);
- ``false_positive_area``: mean predicted spurious fraction of the image over images whose
  reference is empty or absent (``n_empty``); training images are excluded here too.

A synthetic dataset's ``spurious.json`` marks images without the feature as ``"none"``; their
oracle mask shows where the feature *would* be, so they count as empty references.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from robustar_ls.data.folders import ImageFolderSplits, Sample
from robustar_ls.data.images import load_rgb
from robustar_ls.data.masks import MaskStore
from robustar_ls.models.spurious_segmenter import MASK_THRESHOLD, SpuriousSegmenter

Progress = Callable[..., Iterable]
STATUS_FILE = "spurious.json"


@dataclass(frozen=True)
class SegmenterScores:
    iou_mean: float | None
    n: int
    false_positive_area: float | None
    n_empty: int

    def to_dict(self) -> dict:
        return asdict(self)


def neutral_images(data: ImageFolderSplits) -> set[str]:
    """Training images a synthetic dataset's ``spurious.json`` marks as carrying no feature."""
    path = data.root / STATUS_FILE
    if not path.is_file():
        return set()
    return {rel for rel, status in json.loads(path.read_text()).items() if status == "none"}


def reference_masks(
    data: ImageFolderSplits, reference: MaskStore, exclude: Iterable[str] = ()
) -> tuple[list[tuple[Sample, np.ndarray]], list[Sample]]:
    """(images with a non-empty reference mask and that mask, images with an empty one)."""
    skip, neutral = set(exclude), neutral_images(data)
    positive, empty = [], []
    for sample in data.splits["train"]:
        if sample.relpath in skip:
            continue
        if sample.relpath in neutral or not reference.has(sample.relpath):
            empty.append(sample)
            continue
        mask = reference.read(sample.relpath)
        (positive.append((sample, mask)) if mask.any() else empty.append(sample))
    return positive, empty


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    union = np.logical_or(pred, ref).sum()
    return float(np.logical_and(pred, ref).sum() / union) if union else 1.0


def _predict(seg: SpuriousSegmenter, samples: Sequence[Sample], chunk: int = 256):
    for start in range(0, len(samples), chunk):
        part = samples[start : start + chunk]
        yield from zip(part, seg.predict_proba([load_rgb(s.path) for s in part]), strict=True)


def evaluate_segmenter(
    seg: SpuriousSegmenter,
    data: ImageFolderSplits,
    reference: MaskStore,
    exclude: Iterable[str] | None = None,
) -> SegmenterScores:
    """Scores over ``data``'s training images; ``exclude`` defaults to ``seg.trained_on``."""
    positive, empty = reference_masks(
        data, reference, seg.trained_on if exclude is None else exclude
    )
    refs = dict((s.relpath, m) for s, m in positive)
    ious = [
        iou(prob >= MASK_THRESHOLD, refs[s.relpath])
        for s, prob in _predict(seg, [s for s, _ in positive])
    ]
    areas = [float((prob >= MASK_THRESHOLD).mean()) for _, prob in _predict(seg, empty)]
    return SegmenterScores(
        iou_mean=round(float(np.mean(ious)), 4) if ious else None,
        n=len(ious),
        false_positive_area=round(float(np.mean(areas)), 4) if areas else None,
        n_empty=len(areas),
    )
