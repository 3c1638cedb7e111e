"""TrainingJobs: one background job at a time, in one process and across processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from robustar_ls.workflows.jobs import TrainingJobs

WAIT = 10.0  # seconds a test waits for a job it controls before it fails


class HeldRun:
    """A run function that blocks until released; counts its calls."""

    def __init__(self, result: dict | None = None, error: Exception | None = None) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.payloads: list[dict] = []
        self.result = result if result is not None else {"model_version": "v2-abc"}
        self.error = error

    def __call__(self, payload: dict, on_progress=None) -> dict:
        self.payloads.append(payload)
        self.started.set()
        assert self.release.wait(WAIT), "test never released the job"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture(params=["memory", "state_dir"])
def make_jobs(request, tmp_path):
    def make(run):
        return TrainingJobs(
            run, state_dir=tmp_path / "state" if request.param == "state_dir" else None
        )

    return make


def test_idle_before_any_job(make_jobs):
    status = make_jobs(HeldRun()).status()
    assert status["state"] == "idle" and status["job_id"] is None and status["error"] is None


def test_job_runs_in_background_and_succeeds(make_jobs):
    run = HeldRun()
    jobs = make_jobs(run)
    started, status = jobs.start({"action": "START_TRAINING"})
    assert started and status["state"] == "running" and status["job_id"]
    assert run.started.wait(WAIT)
    assert jobs.status()["state"] == "running"
    run.release.set()
    final = jobs.wait(WAIT)
    assert final["state"] == "succeeded" and final["result"] == {"model_version": "v2-abc"}
    assert final["job_id"] == status["job_id"] and final["finished_at"] is not None
    assert run.payloads == [{"action": "START_TRAINING"}]


def test_second_start_while_running_is_answered_not_queued(make_jobs):
    run = HeldRun()
    jobs = make_jobs(run)
    _, first = jobs.start({"n": 1})
    assert run.started.wait(WAIT)
    started, status = jobs.start({"n": 2})
    assert not started and status["state"] == "running" and status["job_id"] == first["job_id"]
    run.release.set()
    assert jobs.wait(WAIT)["state"] == "succeeded"
    time.sleep(0.05)
    assert run.payloads == [{"n": 1}]  # the second request never ran


def test_failure_is_captured_and_the_next_job_can_start(make_jobs):
    run = HeldRun(error=RuntimeError("Label Studio at http://x stopped answering"))
    jobs = make_jobs(run)
    jobs.start({})
    run.release.set()
    status = jobs.wait(WAIT)
    assert status["state"] == "failed" and status["result"] is None
    assert status["error"] == "RuntimeError: Label Studio at http://x stopped answering"
    run.error = None
    run.release.set()
    started, _ = jobs.start({})
    assert started
    assert jobs.wait(WAIT)["state"] == "succeeded"


def test_concurrent_starts_start_exactly_one(make_jobs):
    run = HeldRun()
    jobs = make_jobs(run)
    barrier = threading.Barrier(8)
    outcomes: list[bool] = []

    def hit():
        barrier.wait()
        outcomes.append(jobs.start({})[0])

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(outcomes) == [False] * 7 + [True]
    run.release.set()
    jobs.wait(WAIT)
    assert len(run.payloads) == 1


def test_two_instances_sharing_a_state_dir_act_as_one(tmp_path):
    """Two gunicorn workers = two TrainingJobs on one state dir."""
    run_a, run_b = HeldRun(), HeldRun()
    worker_a = TrainingJobs(run_a, state_dir=tmp_path)
    worker_b = TrainingJobs(run_b, state_dir=tmp_path)
    _, status = worker_a.start({})
    assert run_a.started.wait(WAIT)
    started, seen = worker_b.start({})
    assert not started and seen["job_id"] == status["job_id"] and seen["state"] == "running"
    assert worker_b.status()["job_id"] == status["job_id"]
    run_a.release.set()
    worker_a.wait(WAIT)
    assert worker_b.status()["state"] == "succeeded"
    assert worker_b.status()["result"] == run_a.result
    assert run_b.payloads == []


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from robustar_ls.workflows.jobs import TrainingJobs
    state, go = Path(sys.argv[1]), Path(sys.argv[2])

    def run(payload, on_progress):
        while not go.exists():
            time.sleep(0.02)
        return {"from": "child"}

    jobs = TrainingJobs(run, state_dir=state)
    print(jobs.start({})[1]["job_id"], flush=True)
    print(jobs.wait(30)["state"], flush=True)
    """
)


def spawn_child(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "state"), str(tmp_path / "go")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    job_id = child.stdout.readline().strip()
    assert job_id, "child process did not start its job"
    return child, job_id


def test_a_job_in_another_process_blocks_and_is_reported(tmp_path):
    child, job_id = spawn_child(tmp_path)
    try:
        here = HeldRun()
        jobs = TrainingJobs(here, state_dir=tmp_path / "state")
        started, status = jobs.start({})
        assert not started and status["job_id"] == job_id and status["state"] == "running"
        (tmp_path / "go").touch()
        assert child.stdout.readline().strip() == "succeeded"
        assert child.wait(WAIT) == 0
        final = jobs.status()
        assert final["state"] == "succeeded" and final["result"] == {"from": "child"}
        assert here.payloads == []
    finally:
        child.kill()
        child.wait()


def test_a_job_whose_process_died_is_reported_failed_and_frees_the_lock(tmp_path):
    child, job_id = spawn_child(tmp_path)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    file_status = json.loads((tmp_path / "state" / TrainingJobs.STATUS_FILE).read_text())
    assert file_status["state"] == "running"  # the dead process never finished it
    run = HeldRun()
    jobs = TrainingJobs(run, state_dir=tmp_path / "state")
    status = jobs.status()
    assert status["state"] == "failed" and status["job_id"] == job_id
    assert f"pid {child.pid}" in status["error"]
    run.release.set()
    started, _ = jobs.start({})
    assert started and jobs.wait(WAIT)["state"] == "succeeded"


def test_a_job_that_finishes_while_another_worker_reads_its_status_stays_succeeded(tmp_path):
    # Worker A's job ends in the window between worker B reading "running" and B taking the
    # lock: A has written "succeeded" and let go of the lock. B must not take that for a dead
    # process and overwrite the result with "failed" (a flaky Start Training in the e2e loop).
    run = HeldRun()
    run.release.set()
    finished = TrainingJobs(run, state_dir=tmp_path / "state")
    started, running = finished.start({})
    assert started and finished.wait(WAIT)["state"] == "succeeded"
    state = tmp_path / "state" / TrainingJobs.STATUS_FILE
    done = state.read_text()

    reader = TrainingJobs(run, state_dir=tmp_path / "state")
    take_lock = reader._try_lock

    def job_ends_in_the_window():
        state.write_text(done)  # A's final status lands, then A unlocks (it already has)
        return take_lock()

    state.write_text(json.dumps(running))  # what B reads first
    reader._try_lock = job_ends_in_the_window
    status = reader.status()
    assert status["state"] == "succeeded" and status["job_id"] == running["job_id"]
    assert json.loads(state.read_text())["state"] == "succeeded"


def test_progress_reaches_other_workers_throttled(tmp_path):
    """The job's worker sees every record; another worker sees the file, written when due."""
    reported = threading.Event()
    release = threading.Event()

    def run(payload, on_progress):
        on_progress({"phase": "train", "step": 1})
        on_progress({"phase": "train", "step": 2})  # within the interval: memory only
        on_progress({"phase": "eval", "step": 0})  # a new phase: written at once
        on_progress({"phase": "eval", "step": 1})
        reported.set()
        assert release.wait(WAIT)
        return {"model_version": "v2"}

    worker_a = TrainingJobs(run, state_dir=tmp_path, progress_interval=3600)
    worker_b = TrainingJobs(HeldRun(), state_dir=tmp_path)
    worker_a.start({})
    assert reported.wait(WAIT)
    assert worker_a.status()["progress"] == {"phase": "eval", "step": 1}
    assert worker_b.status()["progress"] == {"phase": "eval", "step": 0}
    release.set()
    final = worker_a.wait(WAIT)
    assert final["state"] == "succeeded" and final["progress"]["phase"] == "eval"
    assert worker_b.status()["progress"] == {"phase": "eval", "step": 1}  # the last record


def test_progress_of_an_old_job_is_ignored(tmp_path):
    jobs = TrainingJobs(HeldRun(), state_dir=tmp_path)
    jobs._progress("not-the-job", {"phase": "train"})
    assert jobs.status()["progress"] is None
