"""The ML backend behind a real Label Studio 1.23: connect, predictions, smart tools, saliency."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import torch
from backend_support import BrightObjects
from PIL import Image
from werkzeug.serving import make_server

from robustar_ls.backend.app import create_app
from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.backend.predictor import Predictor
from robustar_ls.config import (
    ImportConfig,
    LabelStudioConfig,
    SegmenterConfig,
    ServeConfig,
    SyntheticConfig,
)
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.labelstudio import client as ls
from robustar_ls.labelstudio.brush import rle_to_mask
from robustar_ls.labelstudio.project_import import import_project
from robustar_ls.labelstudio.urls import saliency_url
from robustar_ls.models.checkpoint import save_checkpoint
from robustar_ls.models.segmenter import Segmenter
from robustar_ls.models.zoo import create_classifier

pytestmark = pytest.mark.e2e

AUTH = ("robustar", "backend-pass")
SECRET = "e2e-secret-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningBackend:
    url: str
    version: str
    predictor: Predictor


@pytest.fixture
def dataset(local_files_dir: Path) -> Path:
    from robustar_ls.data.synthetic import make_dataset

    out = local_files_dir / "ds"
    make_dataset(
        out, SyntheticConfig(size=16, per_class=2, val_per_class=1, test_per_class=1, classes=2)
    )
    return out


@pytest.fixture
def backend(label_studio, dataset, tmp_path, request) -> Iterator[RunningBackend]:
    """Our Flask app on a real socket (werkzeug, threaded).

    Param ``(token kind, read local files from disk)``: by default images are read from the
    document root (production); without it they are downloaded from Label Studio with the token.
    """
    kind, from_disk = getattr(request, "param", ("pat", True))
    classes = ImageFolderSplits.open(dataset).classes
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pt"
    version = save_checkpoint(
        checkpoint,
        create_classifier("resnet18_small", len(classes), width=4),
        arch="resnet18_small",
        classes=classes,
        image_size=16,
        width=4,
    )
    cfg = ServeConfig(
        checkpoint=str(checkpoint),
        document_root=str(label_studio.document_root) if from_disk else "",
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token(kind),
        basic_auth_user=AUTH[0],
        basic_auth_pass=AUTH[1],
        secret=SECRET,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
    )
    predictor = Predictor(
        ModelHolder(checkpoint, device="cpu"),
        ImageFetcher.from_config(cfg),
        Segmenter(BrightObjects(), SegmenterConfig(device="cpu")),  # fake Mask R-CNN
        batch_size=4,
        cache_dir=cfg.resolved_cache_dir(),
    )
    app = create_app(cfg, predictor=predictor)
    port = _free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield RunningBackend(f"http://127.0.0.1:{port}", version, predictor)
    server.shutdown()
    thread.join(timeout=10)


def _import(label_studio, dataset, backend) -> tuple[int, int]:
    client = label_studio.client("legacy")
    ls_cfg = LabelStudioConfig(
        url=label_studio.url,
        project=f"backend-{uuid.uuid4().hex[:8]}",
        document_root=str(label_studio.document_root),
    )
    summary = import_project(
        client,
        ls_cfg,
        ImportConfig(data=str(dataset), backend_url=backend.url),
        basic_auth=AUTH,
        saliency=lambda image_url: saliency_url(backend.url, image_url, SECRET),
    )
    return summary["project_id"], summary["ml_backend_id"]


def test_label_studio_stores_our_predictions(label_studio, dataset, backend):
    client = label_studio.client("legacy")
    pid, ml_id = _import(label_studio, dataset, backend)
    assert client.ml.get(ml_id).state == "CO"  # /health and /setup (basic auth) passed
    client.actions.create(
        id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []}
    )
    tasks = ls.tasks_by_image(client, pid)
    assert tasks
    for relpath, task in tasks.items():
        predictions = list(client.predictions.list(task=task.id))
        assert len(predictions) == 1, relpath
        prediction = predictions[0]
        assert prediction.model_version == backend.version
        by_label = {}
        for region in prediction.result:
            if region["type"] == "textarea":
                text = region["value"]["text"][0]
                assert text.startswith("Predicted: ")
                assert f"True: {task.data['true_class']}" in text
            else:
                assert region["type"] == "brushlabels"
                by_label[region["value"]["brushlabels"][0]] = region
        assert set(by_label) == {"Spurious", "Model attention"}
        size = (by_label["Spurious"]["original_width"], by_label["Spurious"]["original_height"])
        assert size == (16, 16)
        mask = rle_to_mask(by_label["Spurious"]["value"]["rle"], 16, 16)
        assert mask.shape == (16, 16)

        # the task's $saliency URL is ours, signed, and serves the current model's heatmap
        url = task.data["saliency"]
        assert url.startswith(backend.url + "/saliency/")
        heatmap = requests.get(url, timeout=60)
        assert heatmap.status_code == 200 and heatmap.headers["Content-Type"] == "image/png"
        assert heatmap.headers["X-Model-Version"] == backend.version
        parsed = urlparse(url)
        forged = f"{backend.url}{parsed.path}?sig=0000"
        assert requests.get(forged, timeout=30).status_code == 403


def test_smart_key_point_through_label_studio(label_studio, dataset, backend):
    client = label_studio.client("legacy")
    pid, ml_id = _import(label_studio, dataset, backend)
    relpath, task = sorted(ls.tasks_by_image(client, pid).items())[0]
    context = {
        "result": [
            {
                "original_width": 16,
                "original_height": 16,
                "image_rotation": 0,
                "value": {"x": 3.125, "y": 3.125, "width": 1, "keypointlabels": ["Pick colour"]},
                "is_positive": True,
                "id": "kp1",
                "from_name": "colour_pick",
                "to_name": "image",
                "type": "keypointlabels",
                "origin": "manual",
            }
        ]
    }
    response = requests.post(
        f"{label_studio.url}/api/ml/{ml_id}/interactive-annotating",
        json={"task": task.id, "context": context},
        headers=label_studio.auth_headers(),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    (region,) = body["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Spurious"]
    mask = rle_to_mask(region["value"]["rle"], 16, 16) > 0
    image = np.asarray(Image.open(dataset / "train" / relpath).convert("RGB"))
    seed = image[0, 0].astype(int)
    expected = np.abs(image.astype(int) - seed).max(axis=2) <= 24  # the default tolerance
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize("backend", [("legacy", False), ("pat", False)], indirect=True)
def test_images_downloaded_from_label_studio_with_either_token(label_studio, dataset, backend):
    client = label_studio.client("legacy")
    pid, _ = _import(label_studio, dataset, backend)
    client.actions.create(
        id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []}
    )
    task = next(iter(ls.tasks_by_image(client, pid).values()))
    (prediction,) = client.predictions.list(task=task.id)
    assert prediction.model_version == backend.version and prediction.result
