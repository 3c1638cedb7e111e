"""Mask propagation: the learned segmenter's confident masks for images nobody painted.

``propagate_masks(seg, images, expert)`` predicts a mask for every image not in ``expert`` and
keeps it when

- its **confidence** (:func:`robustar_ls.models.spurious_segmenter.mask_confidence`: the soft
  IoU between the probability map and its own 0.5-thresholded mask, 1.0 = every pixel decided)
  is at least ``threshold`` (default :data:`DEFAULT_THRESHOLD`), and
- it covers at least ``min_area`` of the image (an empty prediction has nothing to pair).

**Expert masks always win**: an image in ``expert`` (painted, or reviewed and left empty) is
never predicted, so a propagated mask can never replace or extend an expert's.
:func:`write_propagated` stores the kept masks in a separate :class:`MaskStore`, so paired
training can take ``{**propagated_paths, **expert_paths}`` (expert entries last: they win).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.images import load_rgb
from robustar_ls.data.masks import MaskStore
from robustar_ls.models.spurious_segmenter import (
    MASK_THRESHOLD,
    SpuriousSegmenter,
    mask_confidence,
)

# From bench/bench_segmenter.py (bench/README.md): masks passing 0.9 had a mean IoU of 0.92-1.0
# with the reference on patch, background and a watermark pattern, and almost no featureless
# image passed (<= 0.3 %); single passing masks went as low as IoU 0.49 with 5 expert masks.
DEFAULT_THRESHOLD = 0.9
DEFAULT_MIN_AREA = 0.001  # fraction of the image


@dataclass
class Propagation:
    """Kept masks (bool, each image's size) and the confidence of every predicted image."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    expert_kept: int = 0  # images skipped because the expert's mask wins
    threshold: float = DEFAULT_THRESHOLD
    segmenter_version: str = ""

    def summary(self) -> dict:
        return {
            "propagated": len(self.masks),
            "predicted": len(self.confidence),
            "expert_kept": self.expert_kept,
            "threshold": self.threshold,
            "segmenter_version": self.segmenter_version,
        }


def _chunks(pairs: Iterable[tuple[str, object]], size: int) -> Iterator[list]:
    it = iter(pairs)
    while chunk := list(islice(it, size)):
        yield chunk


def propagate_masks(
    seg: SpuriousSegmenter,
    images: Iterable[tuple[str, Image.Image | np.ndarray]],
    expert: Iterable[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    min_area: float = DEFAULT_MIN_AREA,
    batch_size: int = 64,
) -> Propagation:
    """Confident predicted masks for ``(relpath, image)`` pairs whose relpath is not expert's.

    ``images`` may be a lazy generator: it is consumed ``batch_size`` images at a time.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"propagation threshold must be within [0, 1], got {threshold}")
    expert = set(expert)
    result = Propagation(threshold=threshold, segmenter_version=seg.version)
    for chunk in _chunks(_not_expert(images, expert, result), batch_size):
        probs = seg.predict_proba([im for _, im in chunk])
        for (rel, _), prob in zip(chunk, probs, strict=True):
            conf = mask_confidence(prob)
            result.confidence[rel] = round(conf, 4)
            mask = prob >= MASK_THRESHOLD
            if conf >= threshold and mask.mean() >= min_area and mask.any():
                result.masks[rel] = mask
    return result


def _not_expert(images: Iterable, expert: set[str], result: Propagation) -> Iterator:
    for rel, image in images:
        if rel in expert:
            result.expert_kept += 1
        else:
            yield rel, image


def propagate_dataset(
    seg: SpuriousSegmenter,
    data: ImageFolderSplits,
    expert: MaskStore,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: float = DEFAULT_MIN_AREA,
) -> Propagation:
    """:func:`propagate_masks` over ``data``'s training images; ``expert``'s masks win."""
    samples = data.splits["train"]
    expert_rels = expert.match([s.relpath for s in samples])
    pairs = ((s.relpath, load_rgb(s.path)) for s in samples if s.relpath not in expert_rels)
    result = propagate_masks(seg, pairs, (), threshold, min_area)
    result.expert_kept = len(expert_rels)
    return result


def write_propagated(result: Propagation, store: MaskStore) -> dict[str, Path]:
    """Write the kept masks into ``store`` (atomically, one PNG each); relpath → mask path."""
    return {rel: store.write(rel, mask) for rel, mask in result.masks.items()}
