"""The learned spurious segmenter that ``serve`` uses, reloaded when its file changes.

:class:`LearnedSegmenterHolder` answers :meth:`~LearnedSegmenterHolder.current` with the
segmenter saved at its path (``None`` while there is no file). It costs one ``stat`` per call
and loads the file again only when its (inode, size, mtime) change, so a ``sync-train`` that
retrains the segmenter is picked up by the next ``/predict``. A file that cannot be loaded is
logged and the previously loaded segmenter (if any) stays in use.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from robustar_ls.models.spurious_segmenter import (
    SegmenterFileError,
    SpuriousSegmenter,
    load_spurious_segmenter,
)

log = logging.getLogger(__name__)


def _state(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class LearnedSegmenterHolder:
    """The learned segmenter at ``path``, reloaded when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._state: tuple[int, int, int] | None = None
        self._seg: SpuriousSegmenter | None = None
        self._lock = threading.Lock()

    def current(self) -> SpuriousSegmenter | None:
        state = _state(self.path)
        if state == self._state:
            return self._seg
        with self._lock:
            if state != self._state:
                self._reload(state)
            return self._seg

    def _reload(self, state: tuple[int, int, int] | None) -> None:
        self._state = state
        if state is None:
            if self._seg is not None:
                log.warning("learned segmenter %s is gone: back to Mask R-CNN", self.path)
            self._seg = None
            return
        try:
            self._seg = load_spurious_segmenter(self.path)
        except (SegmenterFileError, OSError) as err:
            log.warning(
                "learned segmenter %s cannot be loaded (%s); keeping %s",
                self.path,
                err,
                self._seg.version if self._seg else "none",
            )
            return
        log.info("learned segmenter %s: version %s", self.path, self._seg.version)
