"""The Label Studio project this backend serves, as Label Studio itself names it.

Label Studio's ``/setup``, ``/predict`` and ``/webhook`` requests name their project; the app's
views note the id (:meth:`ProjectMemory.note`) in ``<cache_dir>/label-studio-project.json``, so
every gunicorn worker knows the id seen last: the task-centre page links to that project and
the prefetch works for it until a request names another. The file is written only when a
worker sees a new id.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from robustar_ls.files import atomic_write_bytes

log = logging.getLogger(__name__)

PROJECT_FILE = "label-studio-project.json"


def project_id_of(value: Any) -> int | None:
    """The project id in a Label Studio request: ``"3.1700000000"`` (ML API), ``{"id": 3}``
    (webhooks) or ``3``."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.split(".", 1)[0].isdigit():
        return int(value.split(".", 1)[0])
    return None


class ProjectMemory:
    """The project id noted in ``<cache_dir>/`` :data:`PROJECT_FILE`, shared by the workers."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.path = Path(cache_dir) / PROJECT_FILE
        self._noted: int | None = None  # the id this worker wrote last

    def note(self, value: Any) -> int | None:
        """Remember the project a request's ``project`` field names (written when new to this
        worker; a failed write is logged, never raised); its id or None."""
        pid = project_id_of(value)
        if pid is None or pid == self._noted:
            return pid
        self._noted = pid
        try:
            atomic_write_bytes(self.path, json.dumps({"id": pid}).encode(), durable=False)
        except OSError as err:
            log.warning("cannot remember Label Studio project %s: %s", pid, err)
        return pid

    def read(self) -> int | None:
        """The project id noted last by any worker, or None."""
        try:
            return project_id_of(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return None
