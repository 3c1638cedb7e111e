"""Time within one ``/predict``: its deadline, chunks paced to it, the tasks deferred past it,
and (when asked for) the seconds spent per stage.

A request's tasks are computed in chunks paced to end before its :class:`Deadline`
(:func:`run_paced`); the tasks left when it passes are *deferred* (:func:`deferred`): Label
Studio gets no prediction for them now and the prefetch stores them in the background, so a
"Retrieve Predictions" on many tasks is answered in time instead of timing out.
:class:`StageTimer` adds up the seconds of each stage (:data:`STAGES`) for the benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from robustar_ls.labelstudio.results import Prediction

log = logging.getLogger(__name__)

STAGES = ("load", "classifier", "segmenter", "saliency", "encoding")


@dataclass(frozen=True)
class Deadline:
    """When a request must be answered: ``at``, a ``time.monotonic()`` value, ``seconds``
    after it began."""

    seconds: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def left(self) -> float:
        """Seconds until the deadline (negative once it passed)."""
        return self.at - time.monotonic()


class StageTimer:
    """Adds the seconds of each stage into ``seconds`` (a dict); measures nothing when None."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds = seconds

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.seconds is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


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
    deadline: Deadline,
    run_chunk: Callable[[Sequence[Any]], list[Prediction]],
) -> tuple[list[Prediction], int]:
    """``run_chunk`` over chunks of ``tasks`` sized by :class:`ChunkPace` while the deadline
    allows: the predictions, and how many tasks they cover."""
    pace, done, predictions = ChunkPace(size), 0, []
    while done < len(tasks):
        count = pace.next_size(deadline.left())
        if count == 0:
            break
        chunk, started = tasks[done : done + count], time.monotonic()
        predictions.extend(run_chunk(chunk))
        pace.record(len(chunk), time.monotonic() - started)
        done += len(chunk)
        if len(tasks) > size:
            log.info("predict: %d/%d tasks in %.1f s", done, len(tasks), pace.seconds)
    return predictions, done


@dataclass(frozen=True)
class DeferredPrediction(Prediction):
    """A task the request's deadline left no time for: Label Studio gets no prediction for it
    (``/predict`` answers ``[]``, so it stores nothing and asks again) and the prefetch
    computes it in the background."""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "deferred": True}


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
