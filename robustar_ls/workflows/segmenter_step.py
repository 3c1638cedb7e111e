"""The learned spurious segmenter's part in a sync-train: retrain it after a sync that changed
masks, and (``--propagate``) give unannotated training images its confident masks.

Runs between the sync and the paired fine-tuning of :mod:`robustar_ls.workflows.sync_train`:

- **retrain**: when the sync added, updated or removed masks (``report.changed``), a segmenter
  is trained on every mask in the store and saved atomically to ``path`` (default
  ``<data>/.robustar/spurious_segmenter.pt``, the file ``serve`` reloads), its parent the
  previous file's version.
- **propagate**: the segmenter's masks whose confidence passes ``threshold`` are written to
  ``<data>/.robustar/propagated_masks`` (cleared first) for the training images without an
  expert mask; paired training receives them as ``extra_masks`` (expert masks always win).
  Without a segmenter file one is trained first.

Under ``torchrun`` the whole step runs on rank 0 and its result (the summary, the propagated
masks' paths) goes to every rank (``sync_train._on_rank0_then_share``): the ranks train on the
same masks, read from the same file system.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.data.masks import MaskStore
from robustar_ls.models.spurious_segmenter import (
    SegmenterFileError,
    SpuriousSegmenter,
    default_segmenter_path,
    load_spurious_segmenter,
)
from robustar_ls.train.propagate import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

PROPAGATED_DIR = "propagated_masks"  # beside the segmenter file


@dataclass(frozen=True)
class SegmenterStep:
    """What a sync-train does with the learned segmenter."""

    retrain: bool = True  # after a sync that changed masks
    propagate: bool = False  # confident masks for unannotated images, in paired training
    threshold: float = DEFAULT_THRESHOLD  # propagation: minimum mask confidence
    path: str = ""  # the segmenter file ("" = <data>/.robustar/spurious_segmenter.pt)

    def file(self, data: ImageFolderSplits) -> Path:
        return Path(self.path) if self.path else default_segmenter_path(data.root)


def _previous_version(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return load_spurious_segmenter(path).version
    except SegmenterFileError as err:
        log.warning("previous segmenter %s unreadable (%s): training a fresh one", path, err)
        return None


def retrain(data: ImageFolderSplits, masks_root: Path, path: Path) -> SpuriousSegmenter:
    """Train on every mask of ``masks_root`` and save atomically to ``path``."""
    from robustar_ls.train.segmenter import train_segmenter

    seg = train_segmenter(data, MaskStore(masks_root), parent_version=_previous_version(path))
    seg.save(path)
    log.info("learned segmenter %s saved to %s", seg.version, path)
    return seg


def run_segmenter_step(
    step: SegmenterStep, data: ImageFolderSplits, masks_root: Path, changed: bool
) -> tuple[dict[str, Any], dict[str, Path]]:
    """``({"version", "retrained", "propagation"?}, extra masks for paired training)``."""
    path = step.file(data)
    seg: SpuriousSegmenter | None = None
    summary: dict[str, Any] = {"path": str(path), "retrained": False, "version": None}
    if step.retrain and changed:
        seg = retrain(data, masks_root, path)
        summary["retrained"] = True
    if not step.propagate:
        if seg is None and path.is_file():
            summary["version"] = _previous_version(path)
        else:
            summary["version"] = seg.version if seg else None
        return summary, {}
    if seg is None and path.is_file():
        seg = load_spurious_segmenter(path)
    elif seg is None:  # nothing to propagate with yet: train one from the store's masks
        seg = retrain(data, masks_root, path)
        summary["retrained"] = True
    summary["version"] = seg.version
    extra, summary["propagation"] = propagate(seg, data, masks_root, path.parent, step.threshold)
    return summary, extra


def propagate(
    seg: SpuriousSegmenter, data: ImageFolderSplits, masks_root: Path, folder: Path, threshold
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write the confident masks for images without an expert mask; (relpath → file, summary)."""
    from robustar_ls.train.propagate import propagate_dataset, write_propagated

    result = propagate_dataset(seg, data, MaskStore(masks_root), threshold=threshold)
    target = folder / PROPAGATED_DIR
    shutil.rmtree(target, ignore_errors=True)  # ours alone: last run's masks are stale
    written = write_propagated(result, MaskStore(target))
    log.info("propagation: %s", result.summary())
    return written, {**result.summary(), "masks": str(target)}
