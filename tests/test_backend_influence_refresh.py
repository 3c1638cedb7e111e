"""Influence rerun by the backend for each new model version (issue 24): the prefetch runs it
before it plans, stores predictions of the test errors beside the top ranks, goes on when
influence fails, and a newer model version cancels a running one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prefetch_support import FakePredictor, FakeSdk, ranked_tasks

from robustar_ls.backend.influence_refresh import (
    Cancelled,
    InfluenceRefresh,
    RefreshRun,
    _Progress,
)
from robustar_ls.backend.prefetch import Prefetcher
from robustar_ls.config import PrefetchConfig


class ServingPredictor(FakePredictor):
    """A predictor whose served checkpoint has a classifier version."""

    def __init__(self, version: str = "v1-aaaa") -> None:
        super().__init__(version)
        self.classifier = version

    def served(self):
        return SimpleNamespace(checkpoint=SimpleNamespace(version=self.classifier))


class NewRanks:
    """A refresh that writes new ranks (the reverse order) into the fake project."""

    def __init__(self, sdk: FakeSdk, fail: Exception | None = None) -> None:
        self.sdk, self.fail, self.runs = sdk, fail, []

    def ensure(self, run: RefreshRun) -> dict:
        self.runs.append(run.checkpoint.version)
        run.report({"state": "running", "model_version": run.checkpoint.version,
                    "phase": "gradients", "done": 1, "total": 2})  # fmt: skip
        if self.fail is not None:
            raise self.fail
        ranked = sorted((t for t in self.sdk.data.values() if t.get("influence_rank")),
                        key=lambda t: t["influence_rank"])  # fmt: skip
        for new, data in enumerate(reversed(ranked), start=1):
            data["influence_rank"] = new
        return {"state": "done", "model_version": run.checkpoint.version, "scored": 5}


def with_test_errors(tasks: dict[int, dict]) -> dict[int, dict]:
    """Three test errors of confidence 0.6, 0.9, 0.7 and one correct test task."""
    for task_id, (outcome, confidence) in {
        201: ("wrong", 0.6), 202: ("wrong", 0.9), 203: ("wrong", 0.7), 204: ("correct", 0.99)
    }.items():  # fmt: skip
        tasks[task_id] = {"image": f"/t/{task_id}.png", "outcome": outcome,
                          "confidence": confidence}  # fmt: skip
    return tasks


def make(tmp_path, sdk, refresh=None, predictor=None, top=3):
    return Prefetcher(
        predictor or ServingPredictor(),
        PrefetchConfig(top=top, chunk=2, poll=0.05, backoff=0.0),
        tmp_path / "prefetch",
        connect=lambda: sdk,
        default_project=lambda client: 3,
        refresh=refresh,
    )


def test_influence_runs_first_and_the_prefetch_follows_the_new_ranks(tmp_path):
    sdk = FakeSdk(ranked_tasks(5))
    refresh = NewRanks(sdk)
    prefetcher = make(tmp_path, sdk, refresh)
    prefetcher.step()
    assert refresh.runs == ["v1-aaaa"]
    # the new top 3 (old ranks 5, 4, 3: tasks 15, 14, 13), not the old one (11, 12, 13)
    assert [p["task"] for p in sdk.stored] == [15, 14, 13]
    influence = prefetcher.status()["influence"]
    assert influence["state"] == "done" and influence["model_version"] == "v1-aaaa"
    assert influence["finished_at"]


def test_test_errors_get_predictions_surest_first_beside_the_top_ranks(tmp_path):
    sdk = FakeSdk(with_test_errors(ranked_tasks(4)))
    prefetcher = make(tmp_path, sdk, top=2)
    prefetcher.step()
    stored = [p["task"] for p in sdk.stored]
    assert stored == [202, 203, 11, 12]  # up to `top` errors, surest first; then ranks 1, 2
    assert 204 not in stored and 201 not in stored


def test_a_failed_influence_is_reported_and_the_prefetch_goes_on(tmp_path, caplog):
    sdk = FakeSdk(ranked_tasks(3))
    prefetcher = make(tmp_path, sdk, NewRanks(sdk, fail=RuntimeError("no test split")))
    prefetcher.step()
    status = prefetcher.status()
    assert status["state"] == "done" and status["influence"]["state"] == "failed"
    assert "RuntimeError: no test split" in status["influence"]["error"]
    assert [p["task"] for p in sdk.stored] == [11, 12, 13]  # the ranks there were
    assert "influence for model version v1-aaaa failed" in caplog.text


def test_a_newer_model_version_cancels_a_running_influence(tmp_path):
    sdk = FakeSdk(ranked_tasks(3))
    predictor = ServingPredictor()

    class Slow(NewRanks):
        def ensure(self, run):
            predictor.model_version = "v2-bbbb"  # training finished meanwhile
            list(_Progress(run)(range(3), desc="gradients"))
            raise AssertionError("not cancelled")

    prefetcher = make(tmp_path, sdk, Slow(sdk), predictor)
    prefetcher.step()
    assert prefetcher.status()["state"] == "superseded"
    assert sdk.stored == []


def test_progress_reports_each_step_and_stops_when_cancelled():
    records, stop = [], {"now": False}
    run = RefreshRun(None, 3, SimpleNamespace(version="v7"), records.append, lambda: stop["now"])
    progress = _Progress(run)
    assert list(progress([10, 20], desc="gradients (train)")) == [10, 20]
    assert [(r["phase"], r["done"], r["total"]) for r in records] == [
        ("gradients (train)", 0, 2),
        ("gradients (train)", 1, 2),
    ]
    stop["now"] = True
    with pytest.raises(Cancelled):
        next(iter(progress(iter([1, 2]), desc="update tasks", total=2)))


def test_a_project_holding_this_versions_influence_is_not_scored_again(tmp_path):
    tasks = ranked_tasks(2)
    tasks[11]["influence_version"] = "v1-aaaa"  # rank 1: `robustar-ls influence` wrote it
    sdk = FakeSdk(tasks)
    refresh = InfluenceRefresh(tmp_path / "no-such-dataset")
    run = RefreshRun(sdk, 3, SimpleNamespace(version="v1-aaaa"), print, lambda: False)
    assert refresh.ensure(run) == {"state": "current", "model_version": "v1-aaaa"}
    calls = len(sdk.tasks.queries)
    assert refresh.ensure(run)["state"] == "current" and len(sdk.tasks.queries) == calls
    assert refresh.due(sdk, 3, "v2-bbbb")  # another version is due (its data is then read)
