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
        assert all(body and body["model_version"] == version for body in answers)
        assert "checkpoint_error" in answers[-1] and str(tmp_path) not in str(answers[-1])
        assert "last-good copy" in server_log(tmp_path)
