"""Per-request bounds of ``/predict``: tasks, decoded pixels, the answer's size and time.

A request over a bound is still answered: the tasks beyond it get a prediction with an
``error`` saying which limit they hit, so Label Studio shows the others and can ask again.
Per-image limits (sides, aspect, pixels) live in :mod:`robustar_ls.backend.decoding`.

Time: a request's tasks are computed in chunks paced to end before its deadline
(:func:`run_paced`); the tasks left when it passes are *deferred* (:func:`deferred`), so a
Label Studio "Retrieve Predictions" on many tasks is answered in time instead of timing out.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from robustar_ls.labelstudio.results import Prediction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestLimits:
    max_tasks: int = 100
    max_pixels: int = 120_000_000  # decoded pixels of all the request's images together
    max_response_bytes: int = 32 * 1024 * 1024

    def split_tasks(self, tasks: Sequence[Any], version: str) -> tuple[list[Any], list[Prediction]]:
        """The tasks to predict, and an error prediction for each one beyond ``max_tasks``."""
        error = (
            f"over the limit of {self.max_tasks} tasks per request; ask for this task in "
            "another request"
        )
        refused = [Prediction(version, None, [], error) for _ in tasks[self.max_tasks :]]
        return list(tasks[: self.max_tasks]), refused

    def bound_response(self, predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Predictions in order until the answer would exceed ``max_response_bytes``; the
        rest replaced by an error (their result is dropped, not truncated)."""
        used, bounded = 0, []
        for prediction in predictions:
            size = len(json.dumps(prediction))
            if used + size > self.max_response_bytes:
                prediction = {
                    "model_version": prediction.get("model_version"),
                    "score": None,
                    "result": [],
                    "error": (
                        f"the answer would exceed {self.max_response_bytes} bytes with this "
                        "task's result; ask for it in a request with fewer tasks"
                    ),
                }
                size = len(json.dumps(prediction))
            used += size
            bounded.append(prediction)
        return bounded


def upscale_mask(mask: np.ndarray | None, size: tuple[int, int]) -> np.ndarray | None:
    """A bool mask computed on a reduced image, brought to the displayed ``(width, height)``."""
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    width, height = size
    if mask.shape == (height, width):
        return mask
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.resize((width, height), Image.Resampling.NEAREST)) > 127


@dataclass(frozen=True)
class DeferredPrediction(Prediction):
    """A task the request's deadline left no time for: Label Studio gets no prediction for it
    (``/predict`` answers ``[]``, so it stores nothing and asks again) and the prefetch
    computes it in the background."""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "deferred": True}


class ChunkPace:
    """How many tasks the next chunk of a ``/predict`` may hold to end before its deadline.

    The first chunk holds ``first`` tasks (a slow model is measured before a large chunk
    commits to it); later ones as many as fit in the time left at the slower of the last
    chunk's and the mean pace, with a ``margin``, at most ``size``; 0 means stop here.
    """

    def __init__(self, size: int, first: int = 4, margin: float = 1.25) -> None:
        self.size = max(1, size)
        self.first = max(1, min(first, self.size))
        self.margin = margin
        self.tasks = 0
        self.seconds = 0.0
        self.last: float | None = None  # seconds per task of the last chunk

    def record(self, tasks: int, seconds: float) -> None:
        if tasks > 0:
            self.tasks += tasks
            self.seconds += seconds
            self.last = seconds / tasks

    def next_size(self, remaining_s: float) -> int:
        if remaining_s <= 0:
            return 0
        if self.last is None:
            return self.first
        per_task = max(self.last, self.seconds / self.tasks) * self.margin
        if per_task <= 0:
            return self.size
        return max(0, min(self.size, int(remaining_s / per_task)))


def run_paced(
    tasks: Sequence[Any],
    size: int,
    deadline: float,
    run_chunk: Callable[[Sequence[Any]], list[Prediction]],
) -> tuple[list[Prediction], int]:
    """``run_chunk`` over chunks of ``tasks`` sized by :class:`ChunkPace` while the deadline
    (a ``time.monotonic()`` value) allows: the predictions, and how many tasks they cover."""
    pace, done, predictions = ChunkPace(size), 0, []
    while done < len(tasks):
        count = pace.next_size(deadline - time.monotonic())
        if count == 0:
            break
        chunk, started = tasks[done : done + count], time.monotonic()
        predictions.extend(run_chunk(chunk))
        pace.record(len(chunk), time.monotonic() - started)
        done += len(chunk)
        if len(tasks) > size:
            log.info("predict: %d/%d tasks in %.1f s", done, len(tasks), pace.seconds)
    return predictions, done


def deferred(version: str, count: int, total: int, deadline_s: float) -> list[Prediction]:
    """``count`` :class:`DeferredPrediction`s (logged once) for the tasks left at the deadline."""
    if count <= 0:
        return []
    log.warning(
        "predict: the %g s deadline left no time for %d of %d tasks; deferred (no prediction "
        "now: Label Studio asks again, the prefetch stores them)",
        deadline_s,
        count,
        total,
    )
    error = f"deferred: the request's {deadline_s:g} s deadline passed before this task"
    return [DeferredPrediction(version, None, [], error) for _ in range(count)]
