"""Prefetch: after every new model version, influence for it and predictions for the tasks the
expert looks at, stored in Label Studio before the expert opens them.

One background thread per worker; the worker holding the prefetch lock
(:mod:`robustar_ls.backend.prefetch_state`) checks every ``poll`` seconds for a new model
version (the checkpoint or the learned segmenter changed: sync-train, Start Training) and for
requests (``POST /prefetch`` after ``robustar-ls influence``; tasks a ``/predict`` deferred at
its deadline). Then it runs: with ``serve --data``, influence for the served classifier first
when the project's fields come from another version (:mod:`robustar_ls.backend.influence_refresh`:
new ranks, test-error fields and links); then predictions for the deferred tasks, the test
errors (most confident first) and the tasks ranked 1..N by influence, skipping those that
already hold a prediction of the served model version, ``chunk`` tasks per model call through
the same :class:`~robustar_ls.backend.predictor.Predictor` as ``/predict`` (so its cache fills
too), each chunk's predictions stored in one request. Label Studio 1.23 asks a backend for a
task only when the task holds no prediction at all: the stored predictions are what the expert
sees.

A new model version supersedes the running influence and prefetch; a new request supersedes the
prefetch (checked between chunks). Nothing here can break ``/predict`` or ``/health``: the
thread catches everything, a failed run is logged once per message and retried a bounded number
of times; a failed influence run is reported and the prefetch goes on with the ranks there are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robustar_ls.backend.influence_refresh import Cancelled, InfluenceRefresh, RefreshRun
from robustar_ls.backend.predictor import Predictor
from robustar_ls.backend.prefetch_state import IDLE, PrefetchFiles
from robustar_ls.backend.project_memory import ProjectMemory
from robustar_ls.config import InfluenceConfig, PrefetchConfig, ServeConfig
from robustar_ls.errors import RobustarError
from robustar_ls.labelstudio import client as ls

log = logging.getLogger(__name__)

ProjectFinder = Callable[[Any], "int | None"]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Superseded(RobustarError):
    """A new model version or request arrived while a prefetch ran."""


class Prefetcher:
    """Runs the prefetch in a background thread (see the module doc).

    ``predictor``: ``model_version`` and ``predict(tasks, label_config=)`` (and ``served()``
    for ``refresh``); ``connect()``: a Label Studio client; ``default_project(client)``: the
    project to prefetch for until a request names one (or None); ``refresh``: reruns influence
    for a new classifier version first (``serve --data``). Tests call :meth:`step` directly
    instead of :meth:`start`.
    """

    def __init__(
        self,
        predictor: Any,
        cfg: PrefetchConfig,
        state_dir: str | Path,
        connect: Callable[[], Any],
        default_project: ProjectFinder | None = None,
        refresh: InfluenceRefresh | None = None,
    ) -> None:
        self.predictor = predictor
        self.refresh = refresh
        self.cfg = cfg
        self.files = PrefetchFiles(state_dir)
        self.connect = connect
        self.default_project = default_project
        self.policy = ls.RetryPolicy(retries=2, backoff=1.0)
        self._client: Any = None
        self._project: int | None = None
        self._top = cfg.top
        self._deferred: dict[int, bool] = {}  # task ids, in arrival order
        self._version_done: str | None = None
        self._failures = 0
        self._influence_written = 0.0  # monotonic time of the last influence progress write
        self._retry_at: float | None = None
        self._logged: set[str] = set()
        self._status: dict[str, Any] = dict(IDLE)
        self._fd: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- requests from any worker -------------------------------------------------------------

    def request(self, project: int | None, top: int | None = None) -> None:
        """Prefetch (again) for ``project``: after ``robustar-ls influence`` wrote new ranks."""
        self.files.add_request({"project": project, "top": top})
        self._wake.set()

    def defer(self, project: int | None, tasks: list[dict[str, Any]]) -> None:
        """Tasks a ``/predict`` could not finish: predict and store them in the background."""
        ids = [task_id for task_id in map(_task_id, tasks) if task_id is not None]
        if ids:
            self.files.add_request({"project": project, "tasks": ids})
            self._wake.set()

    def status(self) -> dict[str, Any]:
        """The prefetch's status (the lock holder's, from any worker)."""
        status = dict(self._status) if self._fd is not None else self.files.read_status()
        return {**status, "top": status.get("top") or self.cfg.top}

    # -- the background thread ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="prefetch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            if self._fd is None:
                self._fd = self.files.try_lock()
                if self._fd is None:  # another worker prefetches; take over if it dies
                    self._stop.wait(self.cfg.poll * 5)
                    continue
                log.info("prefetch: this worker prefetches the top %d tasks", self.cfg.top)
            try:
                self.step()
            except Exception as err:  # never let the thread die
                self._log_once(f"prefetch step failed: {type(err).__name__}: {err}", exc=True)
            self._wake.wait(self.cfg.poll)
            self._wake.clear()

    def step(self) -> None:
        """One check: run a prefetch if a request or a new model version is due."""
        requests = self.files.take_requests()
        for request in requests:
            self._absorb(request)
        version = self.predictor.model_version
        if requests or version != self._version_done:
            self._failures, self._retry_at = 0, None
        elif self._retry_at is None or time.monotonic() < self._retry_at:
            return
        self._run(version)

    def _absorb(self, request: dict[str, Any]) -> None:
        project = request.get("project")
        if isinstance(project, int) and project != self._project:
            self._project, self._deferred = project, {}
        if isinstance(request.get("top"), int):
            self._top = request["top"]
        for task_id in request.get("tasks") or ():
            if isinstance(task_id, int) and not isinstance(task_id, bool):
                self._deferred[task_id] = True

    # -- one run --------------------------------------------------------------------------------

    def _run(self, version: str) -> None:
        started = {"state": "running", "model_version": version, "started_at": _now()}
        self._publish({**IDLE, **started, "top": self._top})
        try:
            self._prefetch(version)
        except (Superseded, Cancelled):
            self._publish({**self._status, "state": "superseded", "finished_at": _now()})
            log.info("prefetch for model version %s superseded", version)
            return
        except Exception as err:
            self._fail(version, err)
            return
        self._version_done, self._failures, self._retry_at = version, 0, None

    def _prefetch(self, version: str) -> None:
        client = self._connect()
        project = self._project
        if project is None and self.default_project is not None:
            project = self.default_project(client)
        if project is None:
            self._publish({**self._status, "state": "waiting", "finished_at": _now(),
                           "error": "no Label Studio project known yet: run `robustar-ls "
                           "influence --label-studio-url …` or open the project"})  # fmt: skip
            return
        self._publish({**self._status, "project": project})
        self._refresh_influence(client, project, version)
        todo, skipped = self._plan(client, project, version)
        self._publish({**self._status, "project": project, "total": len(todo) + skipped,
                       "skipped": skipped})  # fmt: skip
        label_config = ls.project_label_config(client, project, self.policy)
        # predictions are stored while the next chunks are predicted: one store in flight,
        # the next one takes whatever was predicted meanwhile
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch-store") as writer:
            pending: tuple[Future, int] | None = None
            ready: list[dict] = []
            predicted = 0
            for chunk in chunks(todo, self.cfg.chunk):
                if self.predictor.model_version != version or self.files.has_requests():
                    raise Superseded()
                ready += self._predict(list(chunk), version, label_config)
                predicted += len(chunk)
                if pending is None or pending[0].done():
                    self._settle(pending, len(todo))
                    pending = (writer.submit(self._store, client, project, ready), predicted)
                    ready, predicted = [], 0
            self._settle(pending, len(todo))
            if predicted:
                self._settle((writer.submit(self._store, client, project, ready), predicted),
                             len(todo))  # fmt: skip
        self._deferred = {}
        self._publish({**self._status, "state": "done", "finished_at": _now()})

    def _refresh_influence(self, client: Any, project: int, version: str) -> None:
        """Influence for the served classifier, unless the project has it (see the module doc);
        its progress in the status's ``influence``. Only a newer model version stops it."""
        if self.refresh is None:
            return
        run = RefreshRun(
            client, project, self.predictor.served().checkpoint,
            report=self._report_influence,
            cancelled=lambda: self.predictor.model_version != version,
        )  # fmt: skip
        try:
            outcome = self.refresh.ensure(run)
        except (Cancelled, Superseded, ls.LabelStudioError):
            raise
        except Exception as err:  # the prefetch goes on with the ranks there are
            outcome = {"state": "failed", "error": f"{type(err).__name__}: {err}"}
            self._log_once(f"influence for model version {version} failed: {outcome['error']}")
        self._publish({**self._status, "influence": {**outcome, "finished_at": _now()}})

    def _report_influence(self, record: dict[str, Any]) -> None:
        """A running influence's progress, written at most every half second per phase."""
        phase = record.get("phase")
        last = self._status.get("influence") or {}
        now = time.monotonic()
        if phase == last.get("phase") and now - self._influence_written < 0.5:
            self._status = {**self._status, "influence": record}
            return
        self._influence_written = now
        self._publish({**self._status, "influence": record})

    def _plan(self, client: Any, project: int, version: str) -> tuple[list[dict], int]:
        """The tasks to predict: deferred ones, the test errors, the top ranks (in that order);
        and how many already hold ``version``."""
        ranked = ls.most_influential_tasks(client, project, self._top, self.policy)
        errors = ls.test_error_tasks(client, project, self._top, self.policy)
        deferred = ls.tasks_with_versions(client, project, list(self._deferred), self.policy)
        todo, skipped, seen = [], 0, set()
        for task in [*deferred.values(), *errors, *ranked]:
            if task.id in seen:
                continue
            seen.add(task.id)
            if version in task.versions:
                skipped += 1
            else:
                todo.append({"id": task.id, "data": task.data})
        return todo, skipped

    def _predict(self, tasks: list[dict], version: str, label_config: str) -> list[dict]:
        """The predictions to store for ``tasks``: those with a result of ``version``."""
        results = self.predictor.predict(tasks, label_config=label_config)
        good = []
        for task, result in zip(tasks, results, strict=True):
            if not isinstance(result, dict):
                continue
            if result.get("error"):
                log.warning("prefetch: task %s: no prediction: %s", task["id"], result["error"])
            elif result.get("result") and result.get("model_version") == version:
                good.append({"task": task["id"], "result": result["result"],
                             "score": result.get("score"), "model_version": version})  # fmt: skip
        return good

    def _store(self, client: Any, project: int, predictions: list[dict]) -> int:
        return ls.store_predictions(client, project, predictions, self.policy)

    def _settle(self, pending: tuple[Future, int] | None, total: int) -> None:
        """Wait for a store of ``size`` predicted tasks (its errors end the run); count it."""
        if pending is None:
            return
        store, size = pending
        stored = store.result()
        done = self._status["done"] + stored
        failed = self._status["failed"] + size - stored
        self._publish({**self._status, "done": done, "failed": failed})
        log.info(
            "prefetch: %d/%d tasks of project %s predicted for model version %s",
            done + failed, total, self._status["project"], self._status["model_version"],
        )  # fmt: skip

    def _connect(self) -> Any:
        if self._client is None:
            self._client = self.connect()
        return self._client

    def _fail(self, version: str, err: Exception) -> None:
        self._version_done = version
        self._failures += 1
        if self._failures <= self.cfg.retries:
            delay = self.cfg.backoff * 2 ** (self._failures - 1)
            self._retry_at = time.monotonic() + delay
            retry = f"retry {self._failures}/{self.cfg.retries} in {delay:g} s"
        else:
            self._retry_at = None
            retry = "no more retries until a new model version or request"
        message = f"{type(err).__name__}: {err}"
        self._publish({**self._status, "state": "failed", "finished_at": _now(),
                       "error": message})  # fmt: skip
        self._log_once(f"prefetch for model version {version} failed ({retry}): {message}")
        if isinstance(err, ls.LabelStudioError):
            self._client = None  # connect afresh next time (a new token, a restarted server)

    # -- helpers ---------------------------------------------------------------------------------

    def _publish(self, status: dict[str, Any]) -> None:
        self._status = status
        try:
            self.files.write_status(status)
        except OSError as err:
            self._log_once(f"cannot write the prefetch status: {err}")

    def _log_once(self, message: str, exc: bool = False) -> None:
        if message in self._logged:
            log.debug("%s", message)
            return
        self._logged.add(message)
        log.error("%s", message, exc_info=exc)


def build_prefetcher(
    cfg: ServeConfig, prefetch: PrefetchConfig, influence: InfluenceConfig | None = None
) -> Callable[[Predictor], Prefetcher] | None:
    """What ``create_app`` calls with its predictor to start the prefetch, or None when it is
    off (``--prefetch 0``, or no Label Studio API key: said once, here). With ``cfg.data`` (and
    ``prefetch.influence``), influence is rerun for each new classifier version, by
    ``influence`` (default settings when None)."""
    if prefetch.top < 1:
        log.info("prefetch is off (--prefetch 0)")
        return None
    if not cfg.label_studio_api_key:
        log.warning(
            "prefetch is off: it stores predictions in Label Studio and needs its API key "
            "(set LABEL_STUDIO_API_KEY)"
        )
        return None

    refresh = bool(cfg.data) and prefetch.influence
    if not refresh:
        log.info("influence is not rerun for new model versions (%s)",
                 "--no-influence-refresh" if cfg.data else "no --data")  # fmt: skip

    def default_project(client: Any) -> int | None:
        project = ls.find_project(client, cfg.project) if cfg.project else None
        if project is not None:
            return int(project.id)
        return ProjectMemory(cfg.resolved_cache_dir()).read()  # as Label Studio named it

    def make(predictor: Predictor) -> Prefetcher:
        prefetcher = Prefetcher(
            predictor,
            prefetch,
            Path(cfg.resolved_cache_dir()) / "prefetch",
            connect=lambda: ls.connect(cfg.label_studio_url, cfg.label_studio_api_key),
            default_project=default_project,
            refresh=InfluenceRefresh(cfg.data, influence) if refresh else None,
        )
        prefetcher.start()
        return prefetcher

    return make


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _task_id(task: Any) -> int | None:
    value = task.get("id") if isinstance(task, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
