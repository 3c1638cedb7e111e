"""A copy of the last checkpoint the backend loaded successfully, kept in its cache dir.

A worker that (re)starts while the checkpoint file is broken or missing boots from this copy
instead of failing, so one bad file plus one worker restart never takes the server down. The
copy is per checkpoint path (``<dir>/<hash of the path>.pt``) with a small JSON note beside it
(model version, source path, when saved); both are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from robustar_ls.files import atomic_write_bytes
from robustar_ls.models.checkpoint import CheckpointError, read_version

log = logging.getLogger(__name__)


class LastGoodStore:
    """Save and find the last good copy of one checkpoint file."""

    def __init__(self, folder: str | Path, checkpoint: str | Path) -> None:
        self.folder = Path(folder)
        source = str(Path(checkpoint).expanduser().resolve())
        self.source = source
        stem = hashlib.sha256(source.encode()).hexdigest()[:16]
        self.path = self.folder / f"{stem}.pt"
        self.note_path = self.folder / f"{stem}.json"

    def version(self) -> str | None:
        """The model version of the saved copy, or None when there is none."""
        if not self.path.is_file():
            return None
        try:
            note = json.loads(self.note_path.read_text())
        except (OSError, ValueError):
            return None
        return note.get("version") if isinstance(note, dict) else None

    def save(self, checkpoint: Path, version: str, unchanged: Callable[[], bool]) -> bool:
        """Copy ``checkpoint`` (just loaded as ``version``) unless the copy already holds it.

        ``unchanged()`` says whether the file is still the one that was loaded; checked after
        copying, so a file replaced meanwhile is never kept as "good".
        """
        if self.version() == version:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".tmp", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            shutil.copyfile(checkpoint, tmp_path)
            if not unchanged():
                return False
            tmp_path.replace(self.path)
        finally:
            tmp_path.unlink(missing_ok=True)
        note = {
            "version": version,
            "source": self.source,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_bytes(self.note_path, json.dumps(note).encode())
        log.info("kept a last-good copy of model version %s in %s", version, self.folder)
        return True


def servable_version(checkpoint: str | Path, folder: str | Path) -> str:
    """The model version a server would start with: the checkpoint's, else its last-good copy's.

    Raises the checkpoint's :class:`CheckpointError` when neither exists (nothing to serve).
    """
    try:
        return read_version(checkpoint)
    except CheckpointError as err:
        version = LastGoodStore(folder, checkpoint).version()
        if version is None:
            raise
        log.error("%s; starting with its last-good copy, model version %s", err, version)
        return version
