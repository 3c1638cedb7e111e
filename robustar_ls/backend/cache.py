"""Caches of the ML backend: the model outputs per (model version, image content) in a bounded
in-memory LRU, so re-asking for a task costs no model call; the saliency heatmaps on disk."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustar_ls.files import atomic_write_bytes, safe_name

log = logging.getLogger(__name__)


class LRUCache:
    """A small thread-safe LRU mapping (bounded by entry count)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class OutputCache:
    """Model outputs per (model version, image identity), the ``capacity`` most recent kept.

    An image is anything with an ``identity`` (a
    :class:`~robustar_ls.backend.images.FetchedImage`: a file's path, mtime and size, or the
    hash of the downloaded bytes), so a changed file is computed again.
    """

    def __init__(self, capacity: int) -> None:
        self.lru = LRUCache(capacity)

    def outputs(
        self,
        version: str,
        images: Sequence[Any | None],
        compute: Callable[[list[int]], Sequence[Any | None]],
    ) -> list[Any | None]:
        """Each image's outputs, None where the image is None: from the cache, the others
        from one ``compute(indices of the missing images)`` call (None where it failed); what
        it computed is kept."""
        found = [
            None if image is None else self.lru.get((version, image.identity)) for image in images
        ]
        todo = [i for i, image in enumerate(images) if image is not None and found[i] is None]
        if not todo:
            return found
        for i, result in zip(todo, compute(todo), strict=True):
            found[i] = result
            if result is not None:
                self.lru.put((version, images[i].identity), result)
        return found

    def clear(self) -> None:
        """Forget every output (e.g. a segmenter now serves that did not before)."""
        self.lru.clear()


class HeatmapCache:
    """Saliency heatmap PNGs on disk under ``<cache_dir>/saliency/<model version>/``.

    A file is named by the image's identity: a local file's path, mtime and size, otherwise the
    reference itself. Older versions' folders are pruned when a new version writes its first file.
    """

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir) / "saliency"

    def path(self, version: str, identity: str) -> Path:
        name = hashlib.sha256(identity.encode()).hexdigest()[:32] + ".png"
        return self.root / safe_name(version) / name

    def put(self, path: Path, png: bytes) -> None:
        self._prune_versions(path.parent)
        atomic_write_bytes(path, png)

    def _prune_versions(self, version_dir: Path) -> None:
        if version_dir.is_dir() or not self.root.is_dir():
            return
        for other in self.root.iterdir():
            if other.is_dir() and other != version_dir:
                shutil.rmtree(other, ignore_errors=True)
                log.info("pruned saliency heatmaps of model version %s", other.name)
