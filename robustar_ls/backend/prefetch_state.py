"""What the prefetch shares between gunicorn workers: a lock, a status file and a folder of
requests (its settings are :class:`robustar_ls.config.PrefetchConfig`).

Every worker of ``robustar-ls serve`` builds a prefetcher; the one holding the exclusive
``flock`` on ``<cache_dir>/prefetch/prefetch.lock`` (released by the OS when its process dies)
runs the prefetch and writes ``status.json`` (atomically); every worker answers ``/health``
from that file. A request (``POST /prefetch`` from ``robustar-ls influence``, or the tasks a
``/predict`` could not finish before its deadline) may reach any worker: it is written as one
file under ``requests/``, which the lock holder reads and deletes.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from robustar_ls.files import atomic_write_bytes, try_lock

log = logging.getLogger(__name__)


IDLE: dict[str, Any] = {
    "state": "idle",
    "model_version": None,
    "project": None,
    "total": 0,
    "done": 0,
    "skipped": 0,
    "failed": 0,
    "started_at": None,
    "finished_at": None,
    "error": None,
    "influence": None,  # the influence refresh of this run: state, model_version, phase, done
}


def prefetch_status(prefetcher: Any | None) -> dict[str, Any]:
    """The prefetch's status for ``/health``; never raises."""
    if prefetcher is None:
        return {"state": "disabled"}
    try:
        return prefetcher.status()
    except Exception as err:  # /health must answer whatever the status file holds
        log.debug("prefetch status unreadable: %s", err)
        return {"state": "unknown"}


class PrefetchFiles:
    """The prefetch's shared folder: lock, status file, request files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.requests = self.root / "requests"
        self.requests.mkdir(parents=True, exist_ok=True)

    def try_lock(self) -> int | None:
        """An fd holding the prefetch lock, or None when another worker holds it."""
        return try_lock(self.root / "prefetch.lock")

    def write_status(self, status: dict[str, Any]) -> None:
        data = json.dumps(status, sort_keys=True, default=str).encode()
        atomic_write_bytes(self.root / "status.json", data, durable=False)

    def read_status(self) -> dict[str, Any]:
        try:
            status = json.loads((self.root / "status.json").read_text())
        except FileNotFoundError:
            return dict(IDLE)
        except (OSError, ValueError):
            return {**IDLE, "state": "unknown"}
        return {**IDLE, **status} if isinstance(status, dict) else dict(IDLE)

    def add_request(self, request: dict[str, Any]) -> None:
        """Queue ``{project, top, tasks}`` for the lock holder (one file, written atomically)."""
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}.json"
        atomic_write_bytes(self.requests / name, json.dumps(request).encode(), durable=False)

    def has_requests(self) -> bool:
        return any(p.suffix == ".json" for p in self.requests.iterdir())

    def take_requests(self) -> list[dict[str, Any]]:
        """The queued requests, oldest first; each file is deleted once read."""
        found = []
        paths = [p for p in self.requests.iterdir() if p.suffix == ".json"]
        for path in sorted(paths, key=lambda p: p.stat().st_mtime_ns):
            try:
                request = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                log.warning("prefetch: ignoring unreadable request %s: %s", path.name, err)
                request = None
            path.unlink(missing_ok=True)
            if isinstance(request, dict):
                found.append(request)
        return found
