"""The images of one ``/predict`` request: fetched in parallel (bounded), within its deadline.

Each task's outcome is a :class:`~robustar_ls.backend.images.FetchedImage` or a
:class:`TaskFailure` whose message goes back to Label Studio in that task's prediction
(``"error"``), so one slow or broken image never fails, or stalls, its neighbours beyond the
request's deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from robustar_ls.backend.decoding import PixelBudget
from robustar_ls.backend.images import FetchedImage, ImageFetcher, ImageFetchError
from robustar_ls.backend.pacing import Deadline
from robustar_ls.errors import RobustarError

log = logging.getLogger(__name__)


class TaskError(RobustarError, ValueError):
    """One task cannot be predicted (bad task data); its neighbours are unaffected."""


@dataclass(frozen=True)
class TaskFailure:
    """Why one task got no prediction (sent to Label Studio as the prediction's ``error``)."""

    message: str
    status: int = 400


def image_ref(task: Any, image_value: str) -> str:
    """The image reference in a task's data under ``$image_value``; TaskError if absent."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise TaskError("the task has no 'data' object")
    ref = task["data"].get(image_value)
    if not isinstance(ref, str) or not ref:
        keys = ", ".join(sorted(map(str, task["data"]))) or "none"
        raise TaskError(f"task data has no image under ${image_value} (keys: {keys})")
    return ref


def task_id(task: Any) -> str:
    return str(task.get("id", "?")) if isinstance(task, dict) else "?"


def deadline_failure(deadline_s: float) -> TaskFailure:
    return TaskFailure(
        f"the request's deadline of {deadline_s:g} s passed before this task's image was "
        "fetched; ask again (other tasks of the request were answered)",
        504,
    )


def fetch_images(
    fetcher: ImageFetcher,
    tasks: Sequence[Any],
    image_value: str,
    deadline: Deadline,
    parallelism: int,
    budget: PixelBudget | None = None,
) -> list[FetchedImage | TaskFailure]:
    """Each task's image, at most ``parallelism`` at a time, giving up at the request's
    ``deadline``, all of them within the request's pixel ``budget``."""
    results: list[FetchedImage | TaskFailure] = [deadline_failure(deadline.seconds)] * len(tasks)
    pool = ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(tasks))))
    futures = {}
    for i, task in enumerate(tasks):
        try:
            ref = image_ref(task, image_value)
            futures[pool.submit(fetcher.fetch, ref, deadline.at, budget)] = i
        except TaskError as err:
            results[i] = TaskFailure(str(err), 400)
    done, _ = wait(futures, timeout=max(0.0, deadline.left()))
    pool.shutdown(wait=False, cancel_futures=True)  # stragglers stop at their own deadline
    for future in done:
        i = futures[future]
        try:
            results[i] = future.result()
        except ImageFetchError as err:
            results[i] = TaskFailure(str(err), err.status)
        except Exception as err:  # never let one task's image fail the others
            log.exception("task %s: loading its image failed", task_id(tasks[i]))
            results[i] = TaskFailure(f"loading the image failed ({type(err).__name__})", 500)
    for i, result in enumerate(results):
        if isinstance(result, TaskFailure):
            log.warning("task %s: no prediction: %s", task_id(tasks[i]), result.message)
    return results
