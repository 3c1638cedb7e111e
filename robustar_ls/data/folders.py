"""ImageFolder splits (``train/<class>/*``, ``test/<class>/*``, optional ``val/``).

No torch here: listing a dataset (``robustar-ls import``, a sync dry run) must not pay torch's
start-up. The tensor side (:class:`ImageDataset`, ``images_to_batch``, ``normalize``, ...) lives
in :mod:`robustar_ls.data.tensors` and is imported from there (it imports this module, never
the reverse).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from robustar_ls.data.images import IMAGE_EXTENSIONS, is_image_file
from robustar_ls.errors import RobustarError

SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def classes_among(relpaths: Iterable[str]) -> dict[str, int]:
    """How many of ``relpaths`` (``"<class>/<file>"``) each class has, most first."""
    counts = Counter(rel.split("/", 1)[0] for rel in relpaths)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def in_class_turns(relpaths: Iterable[str]) -> list[str]:
    """``relpaths`` (``"<class>/<file>"``, most important first) re-ordered so the classes take
    turns, each keeping its own order: the first of every class (in the order the classes first
    appear), then the second of every class, ... The influence order's top images can come from
    one class (15 of the top 16 on a ``background`` dataset), and masks of one class unteach a
    shortcut for that class only (bench/README.md, "classes taking turns")."""
    queues: dict[str, list[str]] = {}
    for rel in relpaths:
        queues.setdefault(rel.split("/", 1)[0], []).append(rel)
    lists = list(queues.values())
    longest = max((len(q) for q in lists), default=0)
    return [q[i] for i in range(longest) for q in lists if i < len(q)]


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


def sample_at(split_dir: Path, classes: Sequence[str], rel: str) -> Sample | None:
    """The sample :func:`list_samples` lists at ``rel``, found without listing; else None.

    The same rule: ``<class>/.../<file>`` under a class folder, a file with an image suffix,
    reached without passing through a linked folder (``rglob`` does not descend into those).
    """
    parts = rel.split("/")
    if len(parts) < 2 or parts[0] not in classes or any(p in ("", ".", "..") for p in parts):
        return None
    path = split_dir.joinpath(*parts)
    if not is_image_file(path) or not path.is_file():
        return None
    folder = split_dir / parts[0]
    if any(folder.joinpath(*parts[1:i]).is_symlink() for i in range(2, len(parts))):
        return None
    return Sample(path=path.resolve(), relpath=rel, label=list(classes).index(parts[0]))


class SplitImages:
    """The images of one split by relpath, looked up one at a time: in the split's listing
    when it was listed, else on disk by :func:`sample_at` (no listing of the folder)."""

    def __init__(self, split_dir: Path, classes: Sequence[str], listed: list[Sample] | None):
        self.split_dir, self.classes = split_dir, list(classes)
        self._found: dict[str, Sample | None] = {}
        if listed is not None:
            self._found = {s.relpath: s for s in listed}
        self._complete = listed is not None

    def get(self, rel: str) -> Sample | None:
        if rel not in self._found and not self._complete:
            self._found[rel] = sample_at(self.split_dir, self.classes, rel)
        return self._found.get(rel)

    def __contains__(self, rel: object) -> bool:
        return isinstance(rel, str) and self.get(rel) is not None

    def __getitem__(self, rel: str) -> Sample:
        sample = self.get(rel)
        if sample is None:
            raise KeyError(rel)
        return sample


class ListedOnUse(Mapping[str, list[Sample]]):
    """``{split: samples}`` whose splits are listed the first time they are read."""

    def __init__(self, root: Path, present: Sequence[str], classes: Sequence[str]):
        self.root, self.present, self.classes = root, list(present), list(classes)
        self._lists: dict[str, list[Sample]] = {}

    def __getitem__(self, split: str) -> list[Sample]:
        if split not in self.present:
            raise KeyError(split)
        if split not in self._lists:
            self._lists[split] = list_samples(self.root / split, self.classes)
        return self._lists[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self.present)

    def __len__(self) -> int:
        return len(self.present)

    def listed(self, split: str) -> list[Sample] | None:
        return self._lists.get(split)


def _has_image(split_dir: Path, classes: Sequence[str]) -> bool:
    """Whether a split holds an image, stopping at the first one found."""
    for name in classes:
        folder = split_dir / name
        if folder.is_dir() and any(p.is_file() and is_image_file(p) for p in folder.rglob("*")):
            return True
    return False


@dataclass
class ImageFolderSplits:
    """The splits of one dataset folder, checked to share one class list."""

    root: Path
    classes: list[str]
    splits: Mapping[str, list[Sample]]

    @classmethod
    def open(
        cls, root: str | Path, required: Sequence[str] = ("train",), lazy: bool = False
    ) -> ImageFolderSplits:
        """The dataset at ``root``; ``lazy``: each split is listed when first read (a sync
        dry run looks up only its annotated images, :meth:`images`), same checks and errors.
        """
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
        splits: Mapping[str, list[Sample]]
        if lazy:
            splits = ListedOnUse(root, present, classes)
            empty = [s for s in required if not _has_image(root / s, classes)]
        else:
            splits = {split: list_samples(root / split, classes) for split in present}
            empty = [s for s in required if not splits[s]]
        if empty:
            raise DatasetError(f"{root / empty[0]} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return cls(root=root, classes=classes, splits=splits)

    def split_dir(self, split: str) -> Path:
        return self.root / split

    def images(self, split: str) -> SplitImages:
        """The split's images by relpath, without listing the split if it was not listed."""
        listed = self.splits.listed(split) if isinstance(self.splits, ListedOnUse) else None
        if not isinstance(self.splits, ListedOnUse):
            listed = list(self.splits.get(split, []))
        return SplitImages(self.split_dir(split), self.classes, listed)
