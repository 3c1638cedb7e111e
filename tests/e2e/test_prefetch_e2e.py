"""Prefetch and batch predictions against a real Label Studio 1.23 (issue 15, items 3-4).

After ``robustar-ls influence`` with the backend connected, the top N tasks hold a prediction
of the served model version (counted in Label Studio, within a generous bounded wait); a
"Retrieve Predictions" action whose /predict runs out of time stores what was answered, and the
prefetch stores the deferred rest.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from backend_support import BrightObjects, untrained_checkpoint
from werkzeug.serving import make_server

from robustar_ls.backend.app import create_app
from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.backend.predictor import Predictor, PredictorSettings
from robustar_ls.backend.prefetch import build_prefetcher
from robustar_ls.cli import main
from robustar_ls.config import (
    ImportConfig,
    LabelStudioConfig,
    MaskRCNNConfig,
    PrefetchConfig,
    ServeConfig,
    SyntheticConfig,
)
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.project_import import import_project
from robustar_ls.models.maskrcnn import MaskRCNNSegmenter

pytestmark = pytest.mark.e2e

AUTH = ("robustar", "prefetch-pass")
TOP = 6
WAIT_S = 180.0  # generous: the tiny model needs well under a second per task


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def data(local_files_dir: Path) -> Path:
    from robustar_ls.data.synthetic import make_dataset

    out = local_files_dir / "ds"
    config = SyntheticConfig(size=16, per_class=5, val_per_class=0, test_per_class=2, classes=2)
    make_dataset(out, config)
    return out


@pytest.fixture
def served(label_studio, data, tmp_path) -> Iterator[tuple[str, str, Predictor, Path]]:
    """Our backend with its prefetch on a real socket: (url, model version, predictor, ckpt)."""
    torch.manual_seed(0)
    classes = ImageFolderSplits.open(data).classes
    checkpoint = tmp_path / "model.pt"
    version = untrained_checkpoint(checkpoint, classes)
    cfg = ServeConfig(
        checkpoint=str(checkpoint),
        document_root=str(label_studio.document_root),
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token("legacy"),
        basic_auth_user=AUTH[0],
        basic_auth_pass=AUTH[1],
        secret="prefetch-e2e-secret-0123456789",
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        project="",  # found from Label Studio's own requests, then from influence's
    )
    predictor = Predictor(
        ModelHolder(checkpoint, device="cpu"),
        ImageFetcher.from_config(cfg),
        MaskRCNNSegmenter(BrightObjects(), MaskRCNNConfig(device="cpu")),
        PredictorSettings(batch_size=2, cache_dir=cfg.resolved_cache_dir()),
    )
    make_prefetcher = build_prefetcher(cfg, PrefetchConfig(top=TOP, chunk=2, poll=0.2))
    app = create_app(cfg, predictor=predictor, prefetcher=make_prefetcher)
    port = _free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", version, predictor, checkpoint
    finally:
        app.extensions["robustar_ls"].prefetcher.stop()
        server.shutdown()
        thread.join(timeout=10)


def _import(label_studio, data, backend_url: str) -> tuple[int, str]:
    title = f"prefetch-{uuid.uuid4().hex[:8]}"
    ls_cfg = LabelStudioConfig(
        url=label_studio.url, project=title, document_root=str(label_studio.document_root)
    )
    summary = import_project(
        label_studio.client("legacy"),
        ls_cfg,
        ImportConfig(data=str(data), backend_url=backend_url),
        basic_auth=AUTH,
    )
    return summary["project_id"], title


def _holding(client, pid: int, tasks, version: str) -> int:
    held = ls.tasks_with_versions(client, pid, [t.id for t in tasks])
    return sum(version in task.versions for task in held.values())


def _wait_until(predicate, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


@pytest.mark.postgresql
def test_after_influence_the_top_tasks_hold_a_prediction_of_the_served_version(
    label_studio, data, served, tmp_path, monkeypatch, capsys
):
    url, version, _, checkpoint = served
    client = label_studio.client("legacy")
    pid, title = _import(label_studio, data, url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.legacy_token)
    monkeypatch.setenv("BASIC_AUTH_USER", AUTH[0])
    monkeypatch.setenv("BASIC_AUTH_PASS", AUTH[1])
    argv = ["influence", "--data", str(data), "--checkpoint", str(checkpoint), "--k", "64",
            "--device", "cpu", "--label-studio-url", label_studio.url, "--project", title,
            "--prefetch", str(TOP), "-q"]  # fmt: skip
    assert main(argv) == 0
    assert f"the ML backend at {url} prefetches the top {TOP} tasks" in capsys.readouterr().out

    top = ls.most_influential_tasks(client, pid, TOP)
    assert [t.data["influence_rank"] for t in top] == list(range(1, TOP + 1))
    assert _wait_until(lambda: _holding(client, pid, top, version) == TOP), (
        f"{_holding(client, pid, top, version)} of the top {TOP} tasks hold {version}"
    )
    # the test errors (up to N, surest first) get one too: the expert opens them from their tab
    errors = ls.test_error_tasks(client, pid, TOP)
    assert errors and all(t.data["outcome"] == "wrong" for t in errors)
    expected = {t.id for t in top} | {t.id for t in errors}
    stored = list(client.predictions.list(project=pid))
    assert len([p for p in stored if p.model_version == version]) == len(expected)  # once each
    assert {p.task for p in stored} == expected  # only the top N and the test errors
    status = requests.get(f"{url}/health", timeout=30).json()["prefetch"]
    assert status["state"] == "done" and status["done"] + status["skipped"] == len(expected)
    assert status["model_version"] == version and status["project"] == pid


@pytest.mark.postgresql
def test_retrieve_predictions_past_the_deadline_is_completed_by_the_prefetch(
    label_studio, data, served
):
    url, version, predictor, _ = served
    client = label_studio.client("legacy")
    pid, _ = _import(label_studio, data, url)
    predictor.settings = dataclasses.replace(predictor.settings, request_deadline=1.5)
    slow_chunk = predictor._predict_chunk

    def slow(*args, **kwargs):  # a slow model: a chunk of 2 takes about a second
        time.sleep(1.0)
        return slow_chunk(*args, **kwargs)

    predictor._predict_chunk = slow
    tasks = ls.tasks_by_image(client, pid)
    ids = [t.id for t in tasks.values()]
    client.actions.create(
        id="retrieve_tasks_predictions",
        project=pid,
        selected_items={"all": False, "included": ids},
    )
    answered = ls.tasks_with_versions(client, pid, ids)
    now = sum(version in t.versions for t in answered.values())
    assert 0 < now < len(ids)  # the deadline cut the request; Label Studio stored those
    assert all(len(t.versions) <= 1 for t in answered.values())  # no empty placeholders
    assert _wait_until(lambda: _holding(client, pid, list(answered.values()), version) == len(ids))
    stored = [p for p in client.predictions.list(project=pid) if p.model_version == version]
    assert sorted(p.task for p in stored) == sorted(ids)  # each task once, all with a result
    assert all(p.result for p in stored)
