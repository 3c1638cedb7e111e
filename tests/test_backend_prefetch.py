"""The prefetch (issue 15, item 3): predictions of the most influential tasks stored in Label
Studio for each model version, most influential first; one worker prefetches; a new version
supersedes; failures are bounded and never reach /predict or /health."""

from __future__ import annotations

import logging
import time

import pytest
from prefetch_support import FakePredictor, FakeSdk, FakeStatusError, ranked_tasks

from robustar_ls.backend.prefetch import Prefetcher
from robustar_ls.backend.prefetch_state import PrefetchFiles
from robustar_ls.config import PrefetchConfig
from robustar_ls.labelstudio import client as ls


def make(tmp_path, sdk, predictor=None, default_project=3, **cfg):
    settings = PrefetchConfig(**{"top": 3, "chunk": 2, "poll": 0.05, "backoff": 0.0, **cfg})
    return Prefetcher(
        predictor or FakePredictor(),
        settings,
        tmp_path / "prefetch",
        connect=lambda: sdk,
        default_project=lambda client: default_project,
    )


def test_the_top_n_get_a_prediction_of_the_version_most_influential_first(tmp_path):
    sdk = FakeSdk(ranked_tasks(5))
    prefetcher = make(tmp_path, sdk)
    prefetcher.step()
    calls = prefetcher.predictor.calls
    assert calls == [[11, 12], [13]]  # ranks 1, 2 | 3: chunks of 2, most influential first
    assert [p["task"] for p in sdk.stored] == [11, 12, 13]
    assert {p["model_version"] for p in sdk.stored} == {"v1-aaaa"}
    assert all(p["result"] == [{"task": p["task"]}] for p in sdk.stored)
    status = prefetcher.status()
    assert (status["state"], status["total"], status["done"], status["skipped"]) == (
        "done", 3, 3, 0
    )  # fmt: skip
    assert status["model_version"] == "v1-aaaa" and status["project"] == 3


def test_tasks_holding_the_version_are_skipped_and_a_rerun_predicts_nothing(tmp_path):
    sdk = FakeSdk(ranked_tasks(4))
    sdk.stored.append({"task": 12, "result": [{}], "model_version": "v1-aaaa"})
    sdk.stored.append({"task": 11, "result": [{}], "model_version": "v0-old"})
    prefetcher = make(tmp_path, sdk)
    prefetcher.step()
    assert prefetcher.predictor.calls == [[11, 13]]
    assert prefetcher.status()["skipped"] == 1
    prefetcher.step()  # same version, no request: nothing to do
    assert prefetcher.predictor.calls == [[11, 13]]
    prefetcher.request(3)  # influence ran again: everything already holds the version
    prefetcher.step()
    assert prefetcher.predictor.calls == [[11, 13]]
    assert prefetcher.status()["skipped"] == 3


def test_a_new_model_version_prefetches_again(tmp_path):
    sdk = FakeSdk(ranked_tasks(2))
    predictor = FakePredictor("v1-aaaa")
    prefetcher = make(tmp_path, sdk, predictor)
    prefetcher.step()
    predictor.model_version = "v2-bbbb"
    prefetcher.step()
    assert sdk.versions(11) == ["v1-aaaa", "v2-bbbb"]
    assert sdk.versions(12) == ["v1-aaaa", "v2-bbbb"]


def test_a_new_version_supersedes_the_running_prefetch(tmp_path):
    sdk = FakeSdk(ranked_tasks(6))
    predictor = FakePredictor("v1-aaaa")

    def retrain(p):  # a new checkpoint lands while the first chunk is predicted
        if p.model_version == "v1-aaaa":
            p.model_version = "v2-bbbb"

    predictor.on_predict = retrain
    prefetcher = make(tmp_path, sdk, predictor, top=6)
    prefetcher.step()
    assert prefetcher.status()["state"] == "superseded"
    assert predictor.calls == [[11, 12]]  # stopped before the second chunk
    prefetcher.step()
    assert prefetcher.status()["state"] == "done"
    assert {p["model_version"] for p in sdk.stored if p["task"] >= 13} == {"v2-bbbb"}
    assert len([p for p in sdk.stored if p["model_version"] == "v2-bbbb"]) == 6


def test_a_request_names_the_project_and_n(tmp_path):
    sdk = FakeSdk(ranked_tasks(5), project_id=7)
    prefetcher = make(tmp_path, sdk, default_project=None)
    prefetcher.step()
    assert prefetcher.status()["state"] == "waiting"  # no project known yet
    assert "robustar-ls influence" in prefetcher.status()["error"]
    prefetcher.request(7, 4)
    prefetcher.step()
    assert [p["task"] for p in sdk.stored] == [11, 12, 13, 14]
    assert prefetcher.status()["top"] == 4  # the request's N, not the setting's 3


def test_deferred_tasks_come_first(tmp_path):
    sdk = FakeSdk(ranked_tasks(5))
    prefetcher = make(tmp_path, sdk, top=2)
    prefetcher.step()
    prefetcher.defer(3, [{"id": 15, "data": {}}, {"id": 100, "data": {}}, {"no": "id"}])
    prefetcher.step()
    assert prefetcher.predictor.calls[-1] == [15, 100]
    assert sdk.versions(15) == sdk.versions(100) == ["v1-aaaa"]


def test_tasks_whose_prediction_failed_are_counted_not_stored(tmp_path, caplog):
    sdk = FakeSdk(ranked_tasks(3))
    predictor = FakePredictor()
    predictor.errors = {12}
    prefetcher = make(tmp_path, sdk, predictor)
    with caplog.at_level(logging.WARNING):
        prefetcher.step()
    assert [p["task"] for p in sdk.stored] == [11, 13]
    assert (prefetcher.status()["done"], prefetcher.status()["failed"]) == (2, 1)
    assert "task 12: no prediction: broken image" in caplog.text


def test_failures_are_logged_once_and_retried_a_bounded_number_of_times(tmp_path, caplog):
    sdk = FakeSdk(ranked_tasks(2))
    sdk.projects.fail_imports = [FakeStatusError(400)] * 10  # refused every time
    prefetcher = make(tmp_path, sdk, retries=2)
    with caplog.at_level(logging.ERROR):
        for _ in range(6):
            prefetcher.step()
    assert len(prefetcher.predictor.calls) == 3  # the run and its 2 retries, then it waits
    status = prefetcher.status()
    assert status["state"] == "failed" and "HTTP 400" in status["error"]
    failures = [r for r in caplog.records if "prefetch for model version" in r.getMessage()]
    assert len({r.getMessage() for r in failures}) == len(failures)  # each message once
    sdk.projects.fail_imports = []
    prefetcher.request(3)  # a new request tries again
    prefetcher.step()
    assert prefetcher.status()["state"] == "done" and len(sdk.stored) == 2


def test_a_transient_store_error_is_retried_within_the_run(tmp_path):
    sdk = FakeSdk(ranked_tasks(2))
    sdk.projects.fail_imports = [ConnectionError("reset")]
    prefetcher = make(tmp_path, sdk)
    prefetcher.policy = ls.RetryPolicy(retries=2, backoff=0.0)
    prefetcher.step()
    assert prefetcher.status()["state"] == "done" and len(sdk.stored) == 2


def test_only_one_of_several_workers_prefetches(tmp_path):
    sdk = FakeSdk(ranked_tasks(3))
    workers = [make(tmp_path, sdk) for _ in range(3)]  # same state dir, like gunicorn workers
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and workers[0].status()["state"] != "done":
            time.sleep(0.05)
    finally:
        for worker in workers:
            worker.stop()
    holders = [w for w in workers if w._fd is not None]
    assert len(holders) == 1
    assert sum(len(w.predictor.calls) for w in workers) == 2  # one run: 2 chunks
    assert [p["task"] for p in sdk.stored] == [11, 12, 13]
    assert all(w.status()["state"] == "done" for w in workers)  # every worker reports it


def test_requests_reach_the_lock_holder_through_files(tmp_path):
    files = PrefetchFiles(tmp_path / "prefetch")
    files.add_request({"project": 3, "top": 5})
    files.add_request({"project": 4, "tasks": [1, 2]})
    assert files.has_requests()
    assert files.take_requests() == [{"project": 3, "top": 5}, {"project": 4, "tasks": [1, 2]}]
    assert not files.has_requests() and files.take_requests() == []
    (files.requests / "broken.json").write_text("{")
    assert files.take_requests() == [] and not files.has_requests()


@pytest.mark.parametrize("value", ["v1,v2", ["v1", "v2"], " v1 , v2,", ("v2", "v1", None)])
def test_prediction_versions_from_sqlite_and_postgresql(value):
    assert ls.versions_of(value) == {"v1", "v2"}


def test_no_versions():
    assert ls.versions_of("") == ls.versions_of(None) == frozenset()


def test_serve_builds_a_prefetcher_only_with_n_and_a_key(tmp_path):
    from robustar_ls.backend.prefetch import build_prefetcher
    from robustar_ls.config import ServeConfig

    cfg = ServeConfig(cache_dir=str(tmp_path / "cache"), label_studio_url="http://127.0.0.1:9")
    assert build_prefetcher(cfg, PrefetchConfig(top=0)) is None
    assert build_prefetcher(cfg, PrefetchConfig(top=5)) is None  # no API key
    keyed = ServeConfig(**{**cfg.__dict__, "label_studio_api_key": "k"})
    make_prefetcher = build_prefetcher(keyed, PrefetchConfig(top=5, poll=0.05))
    prefetcher = make_prefetcher(FakePredictor())
    try:
        assert prefetcher.files.root == tmp_path / "cache" / "prefetch"
        assert prefetcher._thread is not None and prefetcher._thread.is_alive()
    finally:
        prefetcher.stop()
    assert not prefetcher._thread.is_alive()


def test_predictions_made_while_a_store_is_in_flight_go_in_the_next_store(tmp_path):
    sdk = FakeSdk(ranked_tasks(8))
    imports: list[int] = []
    store = sdk.projects.import_predictions

    def slow_store(id, request, request_options=None):
        imports.append(len(request))
        time.sleep(0.3)  # Label Studio is slower than the model
        return store(id, request, request_options)

    sdk.projects.import_predictions = slow_store
    predictor = FakePredictor()
    predictor.on_predict = lambda p: time.sleep(0.05)
    prefetcher = make(tmp_path, sdk, predictor, top=8, chunk=1)
    prefetcher.step()
    assert [p["task"] for p in sdk.stored] == list(range(11, 19))  # in influence order
    assert imports[0] == 1 and sum(imports) == 8 and len(imports) < 8
    assert prefetcher.status()["done"] == 8
