"""The real server (gunicorn, 2 workers): a broken checkpoint plus a killed worker."""

from __future__ import annotations

import os
import signal

import pytest
from backend_support import save_tiny_checkpoint
from serve_support import children, gunicorn_backend, health, server_log, wait_for

pytestmark = pytest.mark.slow


def test_a_worker_restarted_after_the_checkpoint_broke_serves_the_last_good_model(tmp_path):
    checkpoint = tmp_path / "model.pt"
    version = save_tiny_checkpoint(checkpoint)
    with gunicorn_backend(checkpoint, tmp_path) as (url, master):
        assert master.poll() is None, server_log(tmp_path)
        workers = wait_for(
            lambda: len(children(master.pid)) == 2 and children(master.pid), 120, "two workers"
        )
        checkpoint.write_bytes(b"garbage: not a checkpoint any more")
        os.kill(workers[0], signal.SIGKILL)
        wait_for(
            lambda: workers[0] not in children(master.pid) and len(children(master.pid)) == 2,
            120,
            "a new worker",
        )
        answers = []

        def new_worker_answers():
            body = health(url)
            assert master.poll() is None, "gunicorn's master exited:\n" + server_log(tmp_path)
            answers.append(body)
            return body and body.get("serving") == "last-good copy"

        wait_for(new_worker_answers, 120, "the restarted worker to answer /health")
        # (an answer may be missing: a /health poll can time out on a loaded machine)
        assert all(body["model_version"] == version for body in answers if body)
        assert "checkpoint_error" in answers[-1] and str(tmp_path) not in str(answers[-1])
        assert "last-good copy" in server_log(tmp_path)


def test_health_answers_while_a_prediction_waits_on_a_slow_image(tmp_path):
    import json
    import threading
    import urllib.request

    from test_backend_deadline import slow_server

    checkpoint = tmp_path / "model.pt"
    save_tiny_checkpoint(checkpoint)
    extra = ("--allow-image-host",)
    with (
        slow_server(6.0) as (host, state),
        gunicorn_backend(checkpoint, tmp_path, *extra, host, workers=1) as (url, _master),
    ):
        body = json.dumps({"tasks": [{"id": 1, "data": {"image": f"http://{host}/a.png"}}]})
        request = urllib.request.Request(
            url + "/predict", body.encode(), {"Content-Type": "application/json"}
        )
        answer = {}

        def post():
            with urllib.request.urlopen(request, timeout=60) as resp:
                answer.update(json.loads(resp.read()))

        poster = threading.Thread(target=post)
        poster.start()
        wait_for(lambda: state["now"] == 1, 30, "the prediction to reach the slow image")
        assert health(url) is not None, "the only worker did not answer /health"
        assert state["now"] == 1  # ... while the prediction was still waiting
        poster.join(timeout=60)
        assert answer["results"][0]["result"]
