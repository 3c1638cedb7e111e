"""Time within one /predict: the deadline, chunks paced to it, deferral, per-stage timing."""

from __future__ import annotations

import time

from robustar_ls.backend.pacing import (
    ChunkPace,
    Deadline,
    StageTimer,
    deferred,
    run_paced,
)
from robustar_ls.labelstudio.results import Prediction


def test_chunk_pace_measures_first_then_fits_the_time_left():
    pace = ChunkPace(16, first=4)
    assert pace.next_size(60.0) == 4  # nothing measured yet: a small first chunk
    pace.record(4, 8.0)  # 2 s per task
    assert pace.next_size(60.0) == 16  # at most the batch size
    assert pace.next_size(10.0) == 4  # 10 s / (2 s x 1.25)
    assert pace.next_size(2.0) == 0  # not even one task fits
    assert pace.next_size(-1.0) == 0
    pace.record(2, 10.0)  # slower now: 5 s per task counts
    assert pace.next_size(25.0) == 4


def test_deadline_counts_down_from_its_length():
    deadline = Deadline.after(30.0)
    assert deadline.seconds == 30.0 and 29.0 < deadline.left() <= 30.0
    assert Deadline(1.0, time.monotonic() - 1).left() < 0


def test_run_paced_stops_at_the_deadline_and_the_rest_is_deferred():
    chunks = []

    def run(chunk):
        chunks.append(len(chunk))
        time.sleep(0.3)
        return [Prediction("v1", 0.5, []) for _ in chunk]

    predictions, done = run_paced(list(range(10)), 2, Deadline.after(0.4), run)
    assert chunks == [2] and done == 2 and len(predictions) == 2  # one chunk fit
    rest = deferred("v1", 10 - done, 10, 0.4)
    assert len(rest) == 8
    assert rest[0].to_dict() == {"model_version": "v1", "score": None, "result": [],
                                 "error": "deferred: the request's 0.4 s deadline passed "
                                 "before this task", "deferred": True}  # fmt: skip
    assert deferred("v1", 0, 10, 0.5) == []


def test_run_paced_in_time_covers_every_task_in_order():
    def run(chunk):
        return [Prediction("v1", i, []) for i in chunk]

    predictions, done = run_paced(list(range(7)), 3, Deadline.after(60), run)
    assert done == 7 and [p.score for p in predictions] == list(range(7))


def test_stage_timer_adds_seconds_per_stage_or_measures_nothing():
    seconds: dict[str, float] = {}
    timer = StageTimer(seconds)
    for _ in range(2):
        with timer("load"):
            time.sleep(0.01)
    assert set(seconds) == {"load"} and seconds["load"] >= 0.02
    off = StageTimer()
    with off("load"):
        pass
    assert off.seconds is None
