"""ImageFolder splits (``train/<class>/*``, ``test/<class>/*``, optional ``val/``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from robustar_ls.data.images import IMAGE_EXTENSIONS, is_image_file, load_rgb
from robustar_ls.errors import RobustarError

SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetError(RobustarError, ValueError):
    """The dataset folder is not laid out as expected; the message says what to fix."""


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of the image
    relpath: str  # path relative to the split folder, "<class>/<file>", always with "/"
    label: int


def find_classes(split_dir: Path) -> list[str]:
    """Sorted class folder names of one split."""
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} is not a folder; expected <data>/<split>/<class>/<image>")
    classes = sorted(
        p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise DatasetError(
            f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>"
        )
    return classes


def list_samples(split_dir: Path, classes: Sequence[str]) -> list[Sample]:
    """Every image of a split, in a stable order (class, then file name)."""
    samples = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_file() and is_image_file(path):
                rel = path.relative_to(split_dir).as_posix()
                samples.append(Sample(path=path.resolve(), relpath=rel, label=label))
    return samples


@dataclass
class ImageFolderSplits:
    """The splits of one dataset folder, checked to share one class list."""

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]

    @classmethod
    def open(cls, root: str | Path, required: Sequence[str] = ("train",)) -> ImageFolderSplits:
        root = Path(root).resolve()
        if not root.is_dir():
            raise DatasetError(f"dataset folder {root} does not exist")
        present = [s for s in SPLITS if (root / s).is_dir()]
        missing = [s for s in required if s not in present]
        if missing:
            raise DatasetError(
                f"{root} has no {'/'.join(missing)} folder; expected {root}/train/<class>/<image> "
                "and, for evaluation, test/ (out-of-domain) and optionally val/"
            )
        class_lists = {split: find_classes(root / split) for split in present}
        classes = class_lists[present[0]]
        for split, names in class_lists.items():
            if names != classes:
                raise DatasetError(
                    f"class folders differ between splits: {present[0]}/ has {classes}, "
                    f"{split}/ has {names}; every split needs the same class folders"
                )
        splits = {split: list_samples(root / split, classes) for split in present}
        for split in required:
            if not splits[split]:
                raise DatasetError(
                    f"{root / split} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
        return cls(root=root, classes=classes, splits=splits)

    def split_dir(self, split: str) -> Path:
        return self.root / split


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
