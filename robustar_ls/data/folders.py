"""ImageFolder splits (``train/<class>/*``, ``test/<class>/*``, optional ``val/``).

No torch here: listing a dataset (``robustar-ls import``, a sync dry run) must not pay torch's
start-up. The tensor side (:class:`ImageDataset`, ``images_to_batch``, ``normalize``, ...) lives
in :mod:`robustar_ls.data.tensors` and is still importable from this module (loaded on first
use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustar_ls.data.images import IMAGE_EXTENSIONS, is_image_file
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


_TENSOR_NAMES = frozenset(
    ("ImageDataset", "image_to_tensor", "images_to_batch", "images_to_unit_batch", "normalize")
)


def __getattr__(name: str) -> Any:
    """The tensor helpers of :mod:`robustar_ls.data.tensors`, imported (with torch) on use."""
    if name in _TENSOR_NAMES:
        from robustar_ls.data import tensors

        return getattr(tensors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
