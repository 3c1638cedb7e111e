"""The classifier being served, reloaded when its checkpoint file changes.

Each request calls :meth:`ModelHolder.current` once and uses the returned
:class:`ServedModel` for its whole life. That call costs one ``stat`` of the checkpoint; when the
file changed (inode, size or mtime), the new checkpoint is loaded *completely* (weights, device,
saliency explainer) under a lock and only then swapped in, so no request ever sees a
half-loaded model. A new file that cannot be loaded (truncated, wrong architecture) leaves the
old model serving; the error is logged once per file state, and retried when the file changes
again. Training writes checkpoints atomically (``save_checkpoint``), so the usual case never
sees a partial file at all.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustar_ls.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from robustar_ls.models.zoo import default_device

log = logging.getLogger(__name__)

FileState = tuple[int, int, int, int]  # (device, inode, size, mtime_ns)


@dataclass
class ServedModel:
    """One loaded checkpoint, never modified after it is published."""

    checkpoint: Checkpoint
    device: torch.device
    file_state: FileState
    extras: dict[str, Any] = field(default_factory=dict)  # per-model helpers (explainer)

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def model(self) -> torch.nn.Module:
        return self.checkpoint.model

    @property
    def classes(self) -> list[str]:
        return self.checkpoint.classes

    @property
    def image_size(self) -> int:
        return self.checkpoint.image_size


def file_state(path: Path) -> FileState:
    stat = os.stat(path)
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


class ModelHolder:
    """Holds the served classifier and swaps in a new one when the checkpoint changes.

    ``prepare`` (optional) runs on each freshly loaded model before it is published, e.g. to
    build its saliency explainer into ``served.extras``.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        prepare: Callable[[ServedModel], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = default_device(device)
        self.prepare = prepare
        self._lock = threading.Lock()
        self._current: ServedModel | None = None
        self._failed_state: FileState | None = None
        self.last_error: str | None = None
        self.reloads = 0

    def load_initial(self) -> ServedModel:
        """Load the checkpoint now; raises :class:`CheckpointError` if it is unusable."""
        with self._lock:
            state = self._stat()
            self._current = self._load(state)
            return self._current

    def current(self) -> ServedModel:
        """The model to use for one request (reloaded first if the file changed)."""
        served = self._current
        if served is None:
            return self.load_initial()
        try:
            state = self._stat()
        except CheckpointError as err:
            self._note_failure(None, str(err))
            return served
        if state == served.file_state or state == self._failed_state:
            return served
        with self._lock:
            served = self._current
            assert served is not None
            if state == served.file_state or state == self._failed_state:
                return served  # another thread reloaded (or failed) meanwhile
            try:
                fresh = self._load(state)
            except CheckpointError as err:
                self._note_failure(state, str(err))
                return served
            log.info(
                "checkpoint %s changed: now serving model version %s (was %s)",
                self.path,
                fresh.version,
                served.version,
            )
            self._current = fresh  # one reference assignment: requests see old or new
            self._failed_state = None
            self.last_error = None
            self.reloads += 1
            return fresh

    def _stat(self) -> FileState:
        try:
            return file_state(self.path)
        except FileNotFoundError as err:
            raise CheckpointError(
                f"checkpoint {self.path} does not exist; train one with `robustar-ls train`"
            ) from err
        except OSError as err:
            raise CheckpointError(f"checkpoint {self.path} cannot be read: {err.strerror}") from err

    def _note_failure(self, state: FileState | None, message: str) -> None:
        if state is None or state != self._failed_state:
            served = self._current
            log.error(
                "the checkpoint file changed but cannot be loaded, still serving model version "
                "%s: %s",
                served.version if served else "(none)",
                message,
            )
        self._failed_state = state
        self.last_error = message

    def _load(self, state: FileState) -> ServedModel:
        try:
            checkpoint = load_checkpoint(self.path)
        except CheckpointError:
            raise
        except Exception as err:  # anything else while building the model: same treatment
            raise CheckpointError(
                f"loading {self.path} failed: {type(err).__name__}: {err}"
            ) from err
        checkpoint.model.to(self.device).eval()
        served = ServedModel(checkpoint=checkpoint, device=self.device, file_state=state)
        if self.prepare is not None:
            self.prepare(served)
        return served
