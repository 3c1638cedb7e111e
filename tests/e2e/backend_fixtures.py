"""A real socket for our backend app, with a stand-in segmenter, shared by e2e tests."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from backend_support import BrightObjects
from werkzeug.serving import make_server

from robustar_ls.backend.app import create_app
from robustar_ls.backend.images import ImageFetcher
from robustar_ls.backend.model_holder import ModelHolder
from robustar_ls.backend.predictor import Predictor, PredictorSettings
from robustar_ls.config import (
    ImportConfig,
    LabelStudioConfig,
    MaskRCNNConfig,
    ServeConfig,
    SyntheticConfig,
)
from robustar_ls.data.folders import ImageFolderSplits
from robustar_ls.labelstudio.project_import import import_project
from robustar_ls.labelstudio.urls import saliency_url
from robustar_ls.models.checkpoint import save_checkpoint
from robustar_ls.models.maskrcnn import MaskRCNNSegmenter
from robustar_ls.models.zoo import create_classifier

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
        MaskRCNNSegmenter(BrightObjects(), MaskRCNNConfig(device="cpu")),  # fake Mask R-CNN
        PredictorSettings(batch_size=4, cache_dir=cfg.resolved_cache_dir()),
    )
    app = create_app(cfg, predictor=predictor)
    port = _free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield RunningBackend(f"http://127.0.0.1:{port}", version, predictor)
    server.shutdown()
    thread.join(timeout=10)


def import_with_backend(label_studio, dataset, backend) -> tuple[int, int]:
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
