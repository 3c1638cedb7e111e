"""Images as torch tensors: the one image-to-tensor conversion and the in-memory dataset.

Split from :mod:`robustar_ls.data.folders` so that listing a dataset imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from robustar_ls.data.folders import IMAGENET_MEAN, IMAGENET_STD, Sample
from robustar_ls.data.images import load_rgb


def images_to_unit_batch(images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """RGB images → a float ``(N, 3, S, S)`` batch in ``[0, 1]`` (bilinear resize to S x S).

    The one image-to-tensor conversion: training, fine-tuning and the backend all go through it
    (:func:`image_to_tensor` and :func:`images_to_batch` add the normalisation).
    """
    size = (image_size, image_size)
    arrays = [
        np.asarray(im if im.size == size else im.resize(size, Image.Resampling.BILINEAR))
        for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def images_to_batch(images: Sequence[Image.Image], image_size: int) -> torch.Tensor:
    """RGB images → the classifier's normalised ``(N, 3, S, S)`` batch."""
    return normalize(images_to_unit_batch(images, image_size))


def image_to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """PIL RGB image → normalised float tensor (3, S, S)."""
    return images_to_batch([image], image_size)[0].contiguous()


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """[0,1] images (N, 3, H, W) → the normalised input the classifiers take."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


class ImageDataset(Dataset):
    """Images of one split as normalised tensors, decoded once and kept in memory.

    Small benchmark datasets fit easily; for large ones pass ``cache=False``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.image_size = image_size
        self.transform = transform
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        tensor = image_to_tensor(load_rgb(self.samples[index].path), self.image_size)
        if self._cache is not None:
            self._cache[index] = tensor
        return tensor

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        tensor = self.load(index)
        if self.transform is not None:
            tensor = self.transform(tensor)
        return tensor, self.samples[index].label
