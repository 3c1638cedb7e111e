"""The prefetch over HTTP: POST /prefetch, its status in /health and on the task centre, and
/predict deferring what its deadline leaves no time for (issue 15, items 3 and 4)."""

from __future__ import annotations

import base64
import time

import pytest
from backend_support import make_backend, task, use_settings
from prefetch_support import FakePredictor, FakeSdk, ranked_tasks

from robustar_ls.backend.prefetch import Prefetcher
from robustar_ls.config import PrefetchConfig

AUTH = ("user", "pass")


def _auth() -> dict[str, str]:
    token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


class RecordingPrefetcher:
    def __init__(self, status=None) -> None:
        self.requests: list[tuple] = []
        self.deferred: list[tuple] = []
        self._status = status or {"state": "running", "done": 2, "total": 5, "top": 5}

    def request(self, project, top=None):
        self.requests.append((project, top))

    def defer(self, project, tasks):
        self.deferred.append((project, [t["id"] for t in tasks]))

    def status(self):
        if isinstance(self._status, Exception):
            raise self._status
        return dict(self._status)


def _with(backend, prefetcher):
    backend.app.extensions["robustar_ls"].prefetcher = prefetcher
    return backend


def test_health_says_disabled_without_a_prefetcher(tmp_path):
    backend = make_backend(tmp_path, segmenter=False)
    assert backend.client.get("/health").get_json()["prefetch"] == {"state": "disabled"}
    answer = backend.client.post("/prefetch", json={"project": 3})
    assert answer.status_code == 501 and "--prefetch" in answer.get_json()["error"]


def test_post_prefetch_queues_a_request_and_health_shows_progress(tmp_path):
    backend = _with(make_backend(tmp_path, segmenter=False, auth=AUTH), RecordingPrefetcher())
    assert backend.client.post("/prefetch", json={"project": 3}).status_code == 401
    answer = backend.client.post("/prefetch", json={"project": 3, "top": 50}, headers=_auth())
    assert answer.status_code == 202
    assert answer.get_json()["status"] == "queued"
    assert backend.app.extensions["robustar_ls"].prefetcher.requests == [(3, 50)]
    health = backend.client.get("/health").get_json()  # no auth needed
    assert health["prefetch"] == {"state": "running", "done": 2, "total": 5, "top": 5}


@pytest.mark.parametrize("top", [-1, "ten", 2.5, True])
def test_a_bad_top_is_refused(tmp_path, top):
    backend = _with(make_backend(tmp_path, segmenter=False), RecordingPrefetcher())
    answer = backend.client.post("/prefetch", json={"project": 3, "top": top})
    assert answer.status_code == 400 and "'top'" in answer.get_json()["error"]


def test_health_answers_whatever_the_prefetch_status_does(tmp_path):
    backend = _with(make_backend(tmp_path, segmenter=False), RecordingPrefetcher(OSError("x")))
    answer = backend.client.get("/health")
    assert answer.status_code == 200
    assert answer.get_json()["prefetch"] == {"state": "unknown"}


def test_the_task_centre_shows_the_prefetch(tmp_path):
    status = {"state": "running", "done": 2, "skipped": 1, "total": 5, "top": 5,
              "model_version": "v1-abc"}  # fmt: skip
    backend = _with(make_backend(tmp_path, segmenter=False), RecordingPrefetcher(status))
    html = backend.client.get("/").get_data(as_text=True)
    assert 'id="prefetch-state" class="running">running<' in html
    assert '<span id="prefetch-progress">3/5</span> tasks hold a prediction of v1-abc' in html


def test_a_real_prefetcher_reports_through_health(tmp_path):
    backend = make_backend(tmp_path, segmenter=False)
    sdk = FakeSdk(ranked_tasks(2))
    prefetcher = Prefetcher(
        FakePredictor(), PrefetchConfig(top=2), tmp_path / "pf", lambda: sdk, lambda c: 3
    )
    _with(backend, prefetcher)
    prefetcher.step()
    body = backend.client.get("/health").get_json()["prefetch"]
    assert (body["state"], body["done"], body["total"], body["top"]) == ("done", 2, 2, 2)


def test_predict_defers_what_its_deadline_leaves_no_time_for(tmp_path):
    backend = make_backend(tmp_path, segmenter=False, batch_size=1)
    prefetcher = _with(backend, RecordingPrefetcher()).app.extensions["robustar_ls"].prefetcher
    predictor = backend.predictor
    use_settings(backend, request_deadline=1.0)
    slow_chunk = predictor._predict_chunk

    def slow(*args, **kwargs):
        time.sleep(0.7)
        return slow_chunk(*args, **kwargs)

    predictor._predict_chunk = slow
    tasks = [
        task("ds/train/circle/c0.png", 1),
        task("ds/train/square/s0.png", 2),
        task("ds/test/triangle/t0.png", 3),
    ]
    answer = backend.client.post("/predict", json={"tasks": tasks, "project": "3.1700000000"})
    results = answer.get_json()["results"]
    assert answer.status_code == 200 and len(results) == 3
    assert results[0]["result"] and results[0]["model_version"] == backend.version
    assert results[1:] == [[], []]  # Label Studio stores nothing for them and asks again
    assert prefetcher.deferred == [(3, [2, 3])]


def test_predict_without_a_prefetcher_still_defers(tmp_path):
    backend = make_backend(tmp_path, segmenter=False, batch_size=1)
    use_settings(backend, request_deadline=1e-9)  # nothing fits
    tasks = [task("ds/train/circle/c0.png", 1), task("ds/train/square/s0.png", 2)]
    answer = backend.client.post("/predict", json={"tasks": tasks})
    assert answer.status_code == 200 and answer.get_json()["results"] == [[], []]


def test_predict_within_its_deadline_answers_every_task(tmp_path):
    backend = make_backend(tmp_path, segmenter=False, batch_size=2)
    tasks = [task("ds/train/circle/c0.png", i) for i in range(1, 6)]
    results = backend.client.post("/predict", json={"tasks": tasks}).get_json()["results"]
    assert len(results) == 5 and all(isinstance(r, dict) and r["result"] for r in results)
