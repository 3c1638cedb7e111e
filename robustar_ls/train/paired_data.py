"""The training data of paired fine-tuning: which training images have a mask, and the
dataset that yields (image, mask, label) with the same random crop and flip on image and mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from robustar_ls.data.folders import ImageFolderSplits, Sample
from robustar_ls.data.images import displayed_size, load_rgb
from robustar_ls.data.masks import MaskError, MaskStore, read_mask_png
from robustar_ls.data.tensors import images_to_unit_batch

log = logging.getLogger(__name__)


def find_masks(
    samples: list[Sample], masks_root: str | Path, only: set[str] | None = None
) -> dict[str, Path]:
    """``{image relpath: mask path}`` for the training images with a mask in ``masks_root``.

    ``only`` restricts the result to those image relpaths ("<class>/<file>"). Every mask's size
    is checked against its image's here, before any training: a mismatch is a :class:`MaskError`
    that names the file.
    """
    root = Path(masks_root)
    if not root.is_dir():
        raise MaskError(
            f"mask folder {root} does not exist; sync masks from Label Studio first or pass "
            "--masks DIR (a folder laid out as DIR/train/<class>/<stem>.png)"
        )
    store = MaskStore(root)
    found = store.match([s.relpath for s in samples])
    if only is not None:
        missing = sorted(set(only) - set(found))
        if missing:
            log.warning(
                "%d selected images have no mask in %s (e.g. %s)", len(missing), root, missing[0]
            )
        found = {rel: path for rel, path in found.items() if rel in only}
    by_rel = {s.relpath: s for s in samples}
    for rel, mask_path in found.items():
        image_size = displayed_size(by_rel[rel].path)
        mask_size = displayed_size(mask_path)
        if mask_size != image_size:
            raise MaskError(
                f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image "
                f"{by_rel[rel].path} is {image_size[0]}x{image_size[1]}; masks must have "
                "their image's size (re-export or re-sync the mask)"
            )
    return found


class PairedDataset(Dataset):
    """Training images in [0, 1] with their masks: (image (3,S,S), mask (1,S,S), has_mask, y).

    Images without a mask get an all-zero mask and ``has_mask`` False. Decoded once and kept
    in memory, like :class:`robustar_ls.data.tensors.ImageDataset`.
    """

    def __init__(self, samples: list[Sample], image_size: int, masks: dict[str, Path]) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.masks = dict(masks)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index in self._cache:
            return self._cache[index]
        sample, size = self.samples[index], self.image_size
        image = load_rgb(sample.path)
        original = image.size
        pixels = images_to_unit_batch([image], size)[0]
        mask = torch.zeros(1, size, size)
        if sample.relpath in self.masks:
            array = read_mask_png(self.masks[sample.relpath], original)
            if array.shape != (size, size):
                resized = Image.fromarray(array.astype(np.uint8) * 255).resize(
                    (size, size), resample=Image.NEAREST
                )
                array = np.asarray(resized) >= 128
            mask = torch.from_numpy(array.astype(np.float32)).unsqueeze(0)
        self._cache[index] = (pixels, mask)
        return pixels, mask

    def __getitem__(self, index: int):
        pixels, mask = self._load(index)
        sample = self.samples[index]
        return pixels, mask, sample.relpath in self.masks, sample.label


# -- the job --------------------------------------------------------------------------------


def training_masks(
    data: ImageFolderSplits,
    masks_root: str | Path | None,
    only: set[str] | None,
    extra_masks: Mapping[str, Path] | None,
) -> dict[str, Path]:
    """relpath → mask file of the training images that get a pair: the store's, then
    ``extra_masks`` where the store has none (the store's masks win).

    An all-zero mask (an expert's negative: reviewed, nothing spurious) pairs nothing, so its
    image is left out, as *not annotated*; it still wins over an ``extra_masks`` entry.
    """
    samples = data.splits["train"]
    masks = {} if masks_root is None else find_masks(samples, masks_root, only)
    if masks_root is not None and not masks and only is None:
        raise MaskError(
            f"no mask in {masks_root} matches a training image of {data.root}/train; masks "
            "must be laid out as <masks>/train/<class>/<image stem>.png"
        )
    merged = {**_known(samples, extra_masks), **masks}
    negatives = [rel for rel, path in merged.items() if not read_mask_png(path).any()]
    if negatives:
        log.info("%d all-zero masks (negatives) pair nothing: not annotated", len(negatives))
    return {rel: path for rel, path in merged.items() if rel not in set(negatives)}


def _known(samples: list[Sample], extra: Mapping[str, Path] | None) -> dict[str, Path]:
    """The entries of ``extra`` that name a training image."""
    names = {s.relpath for s in samples}
    return {rel: Path(p) for rel, p in (extra or {}).items() if rel in names}
