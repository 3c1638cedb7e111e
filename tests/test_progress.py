"""Progress records: the tracker's arithmetic (fake clock), and what a real run reports."""

from __future__ import annotations

import math

import pytest

from robustar_ls.train.progress import FIELDS, ProgressTracker, progress_record


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_record_has_every_field_and_a_known_phase():
    record = progress_record("sync")
    assert set(record) == set(FIELDS) and record["phase"] == "sync"
    assert record["fraction"] == 0.0 and record["eta_seconds"] is None
    with pytest.raises(ValueError, match="unknown progress phase"):
        progress_record("coffee")
    with pytest.raises(ValueError, match="unknown progress fields"):
        progress_record("train", speed=3)


def test_tracker_fraction_and_eta_follow_the_steps():
    records: list[dict] = []
    clock = Clock()
    tracker = ProgressTracker(records.append, epochs=2, steps_per_epoch=4, clock=clock)
    tracker.start("eval", steps=3)
    clock.now += 6.0  # the evaluation before training takes 6 s
    for _ in range(3):
        tracker.step()
    assert records[-1]["eta_seconds"] is None and records[-1]["fraction"] == 0.0
    tracker.start_epoch(0)
    for loss in (2.0, 1.5, 1.0):
        clock.now += 1.0  # one second per training step
        tracker.step(loss)
    last = records[-1]
    assert (last["phase"], last["epoch"], last["epochs"]) == ("train", 1, 2)
    assert (last["step"], last["steps"], last["last_loss"]) == (3, 4, 1.0)
    assert last["fraction"] == pytest.approx(3 / 8)
    # 5 steps left at 1 s each, plus one evaluation pass as long as the first (6 s)
    assert last["eta_seconds"] == pytest.approx(5 + 6)
    clock.now += 1.0
    tracker.step(0.5)
    tracker.start_epoch(1)
    assert records[-1]["step"] == 0 and records[-1]["epoch"] == 2
    for _ in range(4):
        clock.now += 1.0
        tracker.step(0.25)
    tracker.start("eval", steps=3)
    assert records[-1]["fraction"] == 1.0 and records[-1]["eta_seconds"] == pytest.approx(6)
    clock.now += 2.0
    tracker.step()
    assert records[-1]["eta_seconds"] == pytest.approx(4)
    tracker.start("write")
    assert records[-1]["fraction"] == 1.0 and records[-1]["eta_seconds"] == 0.0
    fractions = [r["fraction"] for r in records]
    assert fractions == sorted(fractions)


def test_a_tracker_without_listener_is_silent():
    tracker = ProgressTracker(None, epochs=1, steps_per_epoch=1)
    tracker.start_epoch(0)
    tracker.step(1.0)  # nothing to call, nothing raised
    assert tracker.record()["fraction"] == 1.0


def test_plain_training_reports_every_step(tmp_path):
    from robustar_ls.config import ModelConfig, SyntheticConfig, TrainConfig
    from robustar_ls.data.synthetic import make_dataset
    from robustar_ls.models.history import read_history
    from robustar_ls.train.run import train_classifier

    data = tmp_path / "data"
    make_dataset(data, SyntheticConfig(size=16, per_class=4, test_per_class=2, classes=2))
    records: list[dict] = []
    summary = train_classifier(
        data,
        tmp_path / "m.pt",
        ModelConfig(width=4, image_size=16),
        TrainConfig(epochs=2, batch_size=4, device="cpu"),
        on_progress=records.append,
    )
    train = [r for r in records if r["phase"] == "train" and r["step"] > 0]
    assert len(train) == 2 * 2  # 8 images, batches of 4, 2 epochs
    assert all(math.isfinite(r["last_loss"]) for r in train)
    assert [r["phase"] for r in records][-1] == "write"
    assert records[-1]["fraction"] == 1.0
    (entry,) = read_history(tmp_path / "m.pt")
    assert entry["version"] == summary["model_version"] and entry["kind"] == "train"
    assert [e["epoch"] for e in entry["epochs"]] == [1, 2] and entry["before"] is None
    assert set(entry["after"]) == {"train", "val", "test"}
