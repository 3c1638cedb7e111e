"""One training at a time per checkpoint, and no silent overwrite of a checkpoint that changed.

``training_lock(checkpoint)`` takes an exclusive ``flock`` on ``.<name>.training.lock`` beside
the checkpoint, whoever trains: ``robustar-ls sync-train`` and the server's Start Training job
alike; a second training of the same checkpoint is refused at once, not queued. The OS drops
the lock when its process dies.

``check_unchanged(checkpoint, parent_version)`` is the compare-and-swap on writing: training
read version P at its start; if the file holds another version now (someone wrote it without
the lock, e.g. ``robustar-ls train --out`` on the same path), the result is not written over it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from robustar_ls.errors import RobustarError
from robustar_ls.files import try_lock, unlock
from robustar_ls.models.checkpoint import CheckpointError, read_version
from robustar_ls.train.torchrun import Launch, launch


class CheckpointBusy(RobustarError):
    """Another training of the same checkpoint is running."""


class CheckpointChanged(RobustarError):
    """The checkpoint changed on disk while training from it."""


def lock_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path.parent / f".{path.name}.training.lock"


@contextlib.contextmanager
def training_lock(checkpoint: str | Path, here: Launch | None = None) -> Iterator[None]:
    """Hold the checkpoint's training lock, or raise :class:`CheckpointBusy`.

    Under ``torchrun`` (``here``, default: this process's :func:`launch`) only rank 0 takes it
    (every rank trains the same run).
    """
    if not (launch() if here is None else here).is_main:
        yield
        return
    path = lock_path(checkpoint)
    try:
        fd = try_lock(path)
    except OSError as err:
        raise CheckpointBusy(f"cannot take the training lock {path}: {err.strerror}") from err
    if fd is None:
        raise CheckpointBusy(
            f"another training of {Path(checkpoint).name} is running (CLI or the backend's Start "
            "Training); wait for it to finish, then train again"
        )
    try:
        yield
    finally:
        unlock(fd)


def check_unchanged(checkpoint: str | Path, parent_version: str) -> None:
    """Raise :class:`CheckpointChanged` unless ``checkpoint`` still holds ``parent_version``."""
    try:
        current = read_version(checkpoint)
    except CheckpointError as err:
        raise CheckpointChanged(
            f"{Path(checkpoint).name} changed while training from version {parent_version} "
            f"({err}); nothing was written"
        ) from err
    if current != parent_version:
        raise CheckpointChanged(
            f"{Path(checkpoint).name} changed while training: it holds version {current}, "
            f"training started from {parent_version}; nothing was written, train again from "
            "the new version"
        )
