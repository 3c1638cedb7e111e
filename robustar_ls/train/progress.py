"""Progress records of one training run, for whoever listens: a terminal bar, a job status.

A record is a plain dict::

    {phase: sync|eval|train|write, epoch, epochs, step, steps, fraction, eta_seconds,
     last_loss}

``epoch`` counts from 1 (0 before training); ``step``/``steps`` are the batches of the current
phase (of the epoch while training, of the evaluation pass over every split while evaluating);
``fraction`` is the fraction of all training steps done (0 before training, 1 after);
``eta_seconds`` estimates the time left, None until one training step was timed: the remaining
steps at the measured rate, plus one more evaluation pass as long as the one before training
took. ``last_loss`` is the loss of the latest training batch.

:class:`ProgressTracker` turns the run's events into records and hands each one to an
``on_progress`` callback (every batch: the callback throttles what is expensive, e.g. writing a
status file). Pure Python, no torch: the web worker builds records for the sync phase too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

OnProgress = Callable[[dict[str, Any]], None]
PHASES = ("sync", "eval", "train", "write")
FIELDS = ("phase", "epoch", "epochs", "step", "steps", "fraction", "eta_seconds", "last_loss")


def progress_record(phase: str, **fields: Any) -> dict[str, Any]:
    """A record with every field (unknown ones None); ``phase`` must be one of :data:`PHASES`."""
    if phase not in PHASES:
        raise ValueError(f"unknown progress phase {phase!r}; one of {', '.join(PHASES)}")
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown progress fields {sorted(unknown)}")
    return {**dict.fromkeys(FIELDS), "fraction": 0.0, **fields, "phase": phase}


class ProgressTracker:
    """Follows one run (evaluate, train ``epochs`` × ``steps_per_epoch``, evaluate, write)."""

    def __init__(
        self,
        on_progress: OnProgress | None,
        epochs: int,
        steps_per_epoch: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_progress = on_progress
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.clock = clock
        self.phase, self.epoch, self.step_in_phase, self.phase_steps = "eval", 0, 0, 0
        self.done_train_steps = 0
        self.last_loss: float | None = None
        self._phase_started = clock()
        self._train_started: float | None = None
        self._eval_seconds: float | None = None  # the first evaluation pass

    @property
    def total_train_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def start(self, phase: str, steps: int = 0) -> None:
        """Enter ``phase`` ("eval", "train" or "write") with ``steps`` batches to go."""
        now = self.clock()
        if self.phase == "eval" and self._eval_seconds is None and phase != "eval":
            self._eval_seconds = now - self._phase_started
        if phase == "train" and self._train_started is None:
            self._train_started = now
        self.phase, self.step_in_phase, self.phase_steps = phase, 0, steps
        self._phase_started = now
        self.emit()

    def start_epoch(self, epoch: int) -> None:
        """Epoch ``epoch`` (from 0) of training begins."""
        self.epoch = epoch + 1
        self.start("train", self.steps_per_epoch)

    def step(self, loss: float | None = None) -> None:
        """One batch of the current phase done (a training batch carries its loss)."""
        self.step_in_phase += 1
        if self.phase == "train":
            self.done_train_steps += 1
            if loss is not None:
                self.last_loss = float(loss)
        self.emit()

    def fraction(self) -> float:
        if self.phase == "write" or (self.phase == "eval" and self.epoch > 0):
            return 1.0
        return min(self.done_train_steps / max(self.total_train_steps, 1), 1.0)

    def eta_seconds(self) -> float | None:
        now = self.clock()
        if self.phase == "write":
            return 0.0
        if self.phase == "eval" and self.epoch > 0:  # the evaluation after training
            return max((self._eval_seconds or 0.0) - (now - self._phase_started), 0.0)
        if self._train_started is None or self.done_train_steps == 0:
            return None
        rate = (now - self._train_started) / self.done_train_steps
        left = self.total_train_steps - self.done_train_steps
        return rate * left + (self._eval_seconds or 0.0)

    def record(self) -> dict[str, Any]:
        eta = self.eta_seconds()
        return progress_record(
            self.phase,
            epoch=self.epoch,
            epochs=self.epochs,
            step=self.step_in_phase,
            steps=self.phase_steps,
            fraction=round(self.fraction(), 4),
            eta_seconds=None if eta is None else round(eta, 1),
            last_loss=self.last_loss,
        )

    def emit(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.record())


def progress_text(record: dict[str, Any]) -> str:
    """``epoch 2/12, step 5/40, loss 0.412, ETA 1m20s`` (the fields the record has)."""
    parts = []
    if record.get("epochs"):
        parts.append(f"epoch {record.get('epoch') or 0}/{record['epochs']}")
    if record.get("steps"):
        parts.append(f"step {record.get('step') or 0}/{record['steps']}")
    if record.get("last_loss") is not None:
        parts.append(f"loss {float(record['last_loss']):.3f}")
    if record.get("eta_seconds") is not None:
        minutes, seconds = divmod(int(round(float(record["eta_seconds"]))), 60)
        parts.append(f"ETA {minutes}m{seconds:02d}s" if minutes else f"ETA {seconds}s")
    return ", ".join(parts)
