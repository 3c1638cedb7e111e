"""Browser check of the task-centre page (GET /) during and after a real, tiny training job.

No Label Studio here: the job is the Start Training job without a sync (masks from the
synthetic dataset's oracle), run by the real ``TrainingJobs`` behind the real app on a socket.
The second job is held at its second epoch (its progress callback waits on an event), so the
page is seen while it runs, deterministically: the progress bar, its text and the plots must
render; then, released, the job ends and the page shows the new version. A screenshot of the
page during training is saved (``$ROBUSTAR_LS_TASK_CENTRE_SCREENSHOT`` or the tmp folder).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from robustar_ls.backend.app import create_app
from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.backend.predictor import Predictor, PredictorSettings
from robustar_ls.config import ModelConfig, ServeConfig, SyntheticConfig, TrainConfig
from robustar_ls.data.synthetic import make_dataset
from robustar_ls.models.checkpoint import read_version
from robustar_ls.models.history import read_history
from robustar_ls.train.recipe import Recipe
from robustar_ls.train.run import train_classifier
from robustar_ls.workflows.jobs import TrainingJobs
from robustar_ls.workflows.sync_train import SyncTrainRequest, training_job

from .backend_fixtures import _free_port
from .test_browser import _wait_for, browser  # noqa: F401  (the Chromium fixture)

pytestmark = pytest.mark.e2e

TINY = TrainConfig(epochs=3, batch_size=8, lr=0.02, device="cpu", seed=0)


class Gate:
    """Wraps the job's progress callback: holds the job at its first step of epoch 2."""

    def __init__(self, run) -> None:
        self.run, self.armed = run, False
        self.reached, self.release = threading.Event(), threading.Event()

    def __call__(self, payload, on_progress):
        def hold(record):
            on_progress(record)
            where = (record["phase"], record["epoch"], record["step"])
            if self.armed and where == ("train", 2, 1):
                self.reached.set()
                assert self.release.wait(120), "the test never released the job"

        return self.run(payload, hold)


@pytest.fixture
def centre(tmp_path):
    data = tmp_path / "data"
    make_dataset(data, SyntheticConfig(size=16, per_class=8, test_per_class=4, classes=2))
    checkpoint = tmp_path / "model.pt"
    train_classifier(data, checkpoint, ModelConfig(width=4, image_size=16), TINY)
    cfg = ServeConfig(
        checkpoint=str(checkpoint),
        cache_dir=str(tmp_path / "cache"),
        label_studio_url="http://label-studio.invalid:8080",
        project="shapes",
        secret="task-centre-secret",
        device="cpu",
    )
    recipe = Recipe.only("finetune", TINY)
    run = training_job(
        lambda: SyncTrainRequest.open(data, checkpoint, data / "oracle_masks", recipe=recipe)
    )
    gate = Gate(run)
    jobs = TrainingJobs(gate, state_dir=tmp_path / "cache" / "training", progress_interval=0.2)
    predictor = Predictor(
        ModelHolder(checkpoint, device="cpu"),
        ImageFetcher.from_config(cfg),
        None,
        PredictorSettings(cache_dir=cfg.resolved_cache_dir()),
    )
    app = create_app(cfg, predictor=predictor, jobs=jobs)
    port = _free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", checkpoint, jobs, gate
    gate.release.set()
    jobs.wait(60)
    server.shutdown()
    thread.join(timeout=10)


def _plot_points(driver, name: str) -> dict[str, int]:
    """{series: drawn points with a non-empty box} of the SVG plot ``name``."""
    return driver.execute_script(
        "const svg = document.querySelector(`svg[data-plot='${arguments[0]}']`);"
        "if (!svg) return null; const out = {};"
        "for (const g of svg.querySelectorAll('g.series')) {"
        "  const line = g.querySelector('polyline').getBBox();"
        "  const dots = [...g.querySelectorAll('circle')].filter(c => c.getBBox().width > 0);"
        "  out[g.dataset.series] = line.width > 0 || dots.length === 1 ? dots.length : -1; }"
        "return out;",
        name,
    )


def test_page_during_and_after_training(centre, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    url, checkpoint, jobs, gate = centre
    assert jobs.start({"action": "START_TRAINING"})[0]  # a first job, run to the end
    assert jobs.wait(300)["state"] == "succeeded"
    v2 = read_version(checkpoint)

    gate.armed = True
    assert jobs.start({"action": "START_TRAINING"})[0]
    assert gate.reached.wait(300), "the second job never reached epoch 2"
    browser.get(url + "/")
    progress = browser.find_element(By.ID, "training-progress")
    assert 0 < float(progress.get_attribute("value")) < 1
    assert progress.size["width"] > 100  # rendered, not collapsed
    text = browser.find_element(By.ID, "progress-text").text
    assert text.startswith("epoch 2/3, step 1/") and "loss " in text and "ETA " in text
    assert browser.find_element(By.ID, "training-state").text == "running"
    assert browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    # v1 (plain training) and v2 (paired, evaluated before and after): two points per split
    assert _plot_points(browser, "accuracy") == {"test": 2, "val": 2, "train": 2}
    assert _plot_points(browser, "loss") == {"loss": 3, "ce": 3, "ce_paired": 3, "align": 3}
    assert browser.find_element(By.ID, "model-version").text == v2
    shot = Path(os.environ.get("ROBUSTAR_LS_TASK_CENTRE_SCREENSHOT") or tmp_path / "centre.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1400, 720)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    gate.release.set()
    assert jobs.wait(300)["state"] == "succeeded"
    v3 = read_version(checkpoint)

    def finished():
        browser.get(url + "/")
        return browser.find_element(By.ID, "training-state").text == "succeeded"

    _wait_for(finished, 30, "the page to show the finished job")
    assert browser.find_element(By.ID, "model-version").text == v3 != v2
    assert not browser.find_elements(By.ID, "training-progress")
    assert not browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")
    assert _plot_points(browser, "accuracy") == {"test": 3, "val": 3, "train": 3}
    assert [e["version"] for e in read_history(checkpoint)][-2:] == [v2, v3]
    assert browser.execute_script("return window.__pageErrors") == []
