"""The classifier being served, reloaded when its checkpoint file changes.

Each request calls :meth:`ModelHolder.current` once and uses the returned
:class:`ServedModel` for its whole life. That call costs one ``stat`` of the checkpoint; when the
file changed (inode, size or mtime), the new checkpoint is loaded *completely* (weights, device,
saliency explainer) under a lock and only then swapped in, so no request ever sees a
half-loaded model. A new file that cannot be loaded (truncated, wrong architecture) leaves the
old model serving; the error is logged once per file state, and retried when the file changes
again. Training writes checkpoints atomically (``save_checkpoint``), so the usual case never
sees a partial file at all.

With ``last_good_dir``, every checkpoint loaded successfully is also copied there
(:class:`~robustar_ls.backend.last_good.LastGoodStore`). A holder whose checkpoint cannot be
loaded at start (a worker restarted after the file broke) serves that copy instead, says so in
the log and in :attr:`ModelHolder.source`, and picks the checkpoint up again once it loads.
Only when neither loads does :meth:`ModelHolder.load_initial` raise.
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

from robustar_ls.backend.last_good import LastGoodStore
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
        last_good_dir: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = default_device(device)
        self.prepare = prepare
        self.last_good = LastGoodStore(last_good_dir, self.path) if last_good_dir else None
        self.source = "checkpoint"  # or "last-good copy" while the checkpoint cannot be loaded
        self._lock = threading.Lock()
        self._current: ServedModel | None = None
        self._failed_state: FileState | None = None
        self.last_error: str | None = None
        self.reloads = 0

    def load_initial(self) -> ServedModel:
        """Load the checkpoint now (else its last-good copy); CheckpointError if neither loads."""
        with self._lock:
            state: FileState | None = None
            try:
                state = self._stat()
                self._current = self._load(state)
                self.source = "checkpoint"
            except CheckpointError as err:
                self._current = self._load_last_good(err)
                self._failed_state = state
                self.last_error = str(err)
            return self._current

    def _load_last_good(self, err: CheckpointError) -> ServedModel:
        path = self.last_good.path if self.last_good else None
        if path is None or not path.is_file():
            raise err
        try:
            served = self._load(file_state(path), path)
        except CheckpointError as copy_err:
            raise CheckpointError(f"{err}; its last-good copy failed too: {copy_err}") from err
        log.error(
            "checkpoint %s cannot be loaded (%s); serving its last-good copy, model version %s, "
            "until it can",
            self.path,
            err,
            served.version,
        )
        self.source = "last-good copy"
        return served

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
            self.source = "checkpoint"
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
        if state != self._failed_state or message != self.last_error:
            served = self._current
            log.error(
                "the checkpoint file changed but cannot be loaded, still serving model version "
                "%s: %s",
                served.version if served else "(none)",
                message,
            )
        self._failed_state = state
        self.last_error = message

    def _load(self, state: FileState, path: Path | None = None) -> ServedModel:
        """Load ``path`` (default: the checkpoint; then it is also kept as the last-good copy)."""
        try:
            checkpoint = load_checkpoint(path or self.path)
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
        if path is None and self.last_good is not None:
            self._keep_last_good(served)
        return served

    def _keep_last_good(self, served: ServedModel) -> None:
        assert self.last_good is not None
        try:
            self.last_good.save(
                self.path, served.version, lambda: file_state(self.path) == served.file_state
            )
        except OSError as err:  # a full or read-only cache dir must not stop serving
            log.warning("cannot keep a last-good copy of %s: %s", self.path, err)
