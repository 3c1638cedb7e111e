"""Background training jobs for Label Studio's "Start Training" button: one at a time.

:class:`TrainingJobs` runs ``run(payload, on_progress) -> dict`` in a background thread; the
job calls ``on_progress(record)`` as it goes (``train/progress.py``: phase, epoch, step,
fraction, ETA, last loss) and the status reports the latest record as ``progress``. A second
:meth:`~TrainingJobs.start` while a job runs is answered with the running job's status
(``started=False``), never queued. Exceptions of ``run`` end up in the status, never in the
server.

Several server processes (gunicorn ``--workers N``) each hold their own ``TrainingJobs``; with a
``state_dir`` they share one job: the running job holds an exclusive ``fcntl.flock`` on
``<state_dir>/training.lock`` (released by the OS if its process dies), and its status lives in
``<state_dir>/training-status.json`` (written atomically), so every worker refuses a second job
and reports the same state. A status file that says "running" while nobody holds the lock
belongs to a process that died: it is reported as failed. Without ``state_dir`` the guarantee
holds within one process only. Progress reaches the status file at most every
``progress_interval`` seconds (and at each change of phase): other workers see it that fresh.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robustar_ls.files import atomic_write_bytes, try_lock, unlock

log = logging.getLogger(__name__)

IDLE: dict[str, Any] = {
    "state": "idle",
    "job_id": None,
    "started_at": None,
    "finished_at": None,
    "result": None,
    "error": None,
    "progress": None,
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class TrainingJobs:
    """Runs at most one training job at a time (per ``state_dir``), in a background thread."""

    LOCK_FILE = "training.lock"
    STATUS_FILE = "training-status.json"

    def __init__(
        self,
        run: Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], dict[str, Any] | None],
        state_dir: str | Path | None = None,
        progress_interval: float = 1.0,
    ) -> None:
        self.run = run
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.progress_interval = progress_interval
        self._progress_written = (None, 0.0)  # (phase, monotonic time) of the last write
        self._lock = threading.RLock()
        self._status: dict[str, Any] = dict(IDLE)
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)

    # -- cross-process lock and status file ------------------------------------------------

    def _try_lock(self) -> int | None:
        """An fd holding the exclusive job lock, or None when another job holds it."""
        assert self.state_dir is not None
        return try_lock(self.state_dir / self.LOCK_FILE)

    def _read_file(self) -> dict[str, Any]:
        assert self.state_dir is not None
        path = self.state_dir / self.STATUS_FILE
        try:
            status = json.loads(path.read_text())
        except FileNotFoundError:
            return dict(IDLE)
        except (OSError, json.JSONDecodeError) as err:
            log.warning("training status file %s is unreadable (%s); reporting idle", path, err)
            return dict(IDLE)
        return {**IDLE, **status} if isinstance(status, dict) else dict(IDLE)

    def _write_file(self, status: dict[str, Any]) -> None:
        assert self.state_dir is not None
        data = json.dumps(status, indent=1, sort_keys=True, default=str).encode()
        atomic_write_bytes(self.state_dir / self.STATUS_FILE, data, durable=False)

    def _publish(self, status: dict[str, Any]) -> None:
        """Set the status (caller holds ``self._lock``)."""
        self._status = status
        if self.state_dir is not None:
            try:
                self._write_file(status)
            except OSError as err:
                log.error("cannot write training status to %s: %s", self.state_dir, err)

    # -- API ---------------------------------------------------------------------------------

    def start(self, payload: dict[str, Any] | None = None) -> tuple[bool, dict[str, Any]]:
        """Start ``run(payload)`` in the background unless a job runs: (started, status)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False, dict(self._status)
            fd = None
            if self.state_dir is not None:
                fd = self._try_lock()
                if fd is None:
                    other = self._read_file()
                    if other["state"] != "running":  # the other job is writing its first status
                        other = {**IDLE, "state": "running"}
                    return False, other
            status = {**IDLE, "state": "running", "job_id": uuid.uuid4().hex[:12]}
            status["started_at"] = _now()
            status["pid"] = os.getpid()
            self._lock_fd = fd
            self._progress_written = (None, 0.0)
            self._publish(status)
            thread = threading.Thread(
                target=self._work,
                args=(dict(payload or {}), status["job_id"]),
                name=f"training-{status['job_id']}",
                daemon=True,
            )
            self._thread = thread
            try:
                thread.start()
            except BaseException as err:
                self._finish(status["job_id"], None, err)
                raise
            log.info("training job %s started", status["job_id"])
            return True, dict(status)

    def _work(self, payload: dict[str, Any], job_id: str) -> None:
        result: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            result = self.run(payload, lambda record: self._progress(job_id, record))
        except BaseException as err:  # recorded in the status; the server keeps running
            error = err
            log.exception("training job %s failed", job_id)
        finally:
            self._finish(job_id, result, error)

    def _progress(self, job_id: str, record: dict[str, Any]) -> None:
        """The running job's latest progress; written to the status file when due."""
        with self._lock:
            if self._status.get("job_id") != job_id or self._status["state"] != "running":
                return
            self._status = {**self._status, "progress": dict(record)}
            phase, written = self._progress_written
            now = time.monotonic()
            if record.get("phase") == phase and now - written < self.progress_interval:
                return
            self._progress_written = (record.get("phase"), now)
            self._publish(self._status)

    def _finish(
        self, job_id: str, result: dict[str, Any] | None, error: BaseException | None
    ) -> None:
        with self._lock:
            status = dict(self._status)
            status["finished_at"] = _now()
            if error is None:
                status["state"] = "succeeded"
                status["result"] = result
            else:
                status["state"] = "failed"
                status["error"] = f"{type(error).__name__}: {error}"
            self._publish(status)
            if self._lock_fd is not None:
                unlock(self._lock_fd)
                self._lock_fd = None
            log.info("training job %s %s", job_id, status["state"])

    def status(self) -> dict[str, Any]:
        """{state: idle|running|succeeded|failed, job_id, started_at, finished_at, result, error,
        progress}.

        With a ``state_dir``, the last job of any process sharing it.
        """
        with self._lock:
            if self.state_dir is None or (self._thread is not None and self._thread.is_alive()):
                return dict(self._status)
            status = self._read_file()
            if status["state"] != "running":
                return status
            fd = self._try_lock()
            if fd is None:  # another process runs it
                return status
            try:
                # read again under the lock: the job may have finished (final status written,
                # then the lock let go) between the first read and taking the lock
                status = self._read_file()
                if status["state"] != "running":
                    return status
                # "running", yet nobody holds the lock: its process died
                status = {
                    **status,
                    "state": "failed",
                    "finished_at": status.get("finished_at") or _now(),
                    "error": f"the training process (pid {status.get('pid')}) ended before "
                    "the job finished",
                }
                self._write_file(status)
            finally:
                unlock(fd)
            return status

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until this process's job (if any) ends, or ``timeout`` seconds; the status."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()
