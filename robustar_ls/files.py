"""File utilities every layer shares: atomic writes, cross-process locks, safe file names.

Nothing here imports torch or any other part of the package, so the lowest layers (``data/``)
and a web worker's start-up can use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temp file and ``os.replace``: readers see old or new.

    ``durable`` also fsyncs the file and its folder, so the new content survives a power cut
    (checkpoints, masks); a status file that is rewritten often may skip that.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def try_lock(path: str | Path) -> int | None:
    """An fd holding an exclusive ``flock`` on ``path`` (created), or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    """Release a lock taken by :func:`try_lock` (or :func:`exclusive_lock`) and close its fd."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder), waiting for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        unlock(fd)


def safe_name(text: str, fallback: str = "unversioned") -> str:
    """``text`` as one file name: characters other than letters, digits, ``-_.`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or fallback


STALE_TEMP_AGE_S = 600.0  # a temp file this old is no write in progress: its writer died


def remove_stale_temp_files(path: str | Path, min_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Delete the temp files :func:`atomic_write_bytes` left beside ``path`` when killed.

    Only ``.<name>.*.tmp`` files older than ``min_age_s`` go (a younger one may be a write in
    progress in another process). Returns what was removed.
    """
    path = Path(path)
    removed = []
    now = time.time()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - candidate.stat().st_mtime >= min_age_s:
                candidate.unlink()
                removed.append(candidate)
        except OSError:  # vanished meanwhile, or not ours to delete
            continue
    return removed
