"""Helpers for the backend tests: synthetic images, a fake Label Studio file server, tokens."""

from __future__ import annotations

import io
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import numpy as np
import torch
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def two_tone(width: int = 24, height: int = 16, box=(4, 4, 12, 10)) -> np.ndarray:
    """Dark-blue background with a yellow rectangle ``box = (x0, y0, x1, y1)``."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[...] = (10, 20, 120)
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = (240, 220, 30)
    return array


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))
    return path


def make_jwt(token_type: str, lifetime_s: float = 3600) -> str:
    claims = {"token_type": token_type, "exp": int(time.time() + lifetime_s), "user_id": 1}
    return jwt.encode(claims, "not-a-real-key-only-for-tests-0123456789", algorithm="HS256")


class FakeLabelStudio:
    """Serves ``files`` (path → bytes) only to an accepted Authorization header.

    Accepts ``Token <legacy>`` and ``Bearer <access>`` where the access token comes from
    ``POST /api/token/refresh/`` with the configured refresh token. Records every request.
    """

    def __init__(self, legacy: str = "legacy-token", refresh: str | None = None) -> None:
        self.legacy = legacy
        self.refresh = refresh or make_jwt("refresh")
        self.access = make_jwt("access", lifetime_s=600)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.refresh_calls = 0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def accepted(self, authorization: str | None) -> bool:
        return authorization in (f"Token {self.legacy}", f"Bearer {self.access}")

    @contextmanager
    def running(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                auth = self.headers.get("Authorization")
                fake.requests.append(("GET", self.path, auth))
                if not fake.accepted(auth):
                    self._send(401, b'{"detail": "Authentication credentials were not provided."}')
                elif self.path in fake.files:
                    self._send(200, fake.files[self.path], "image/png")
                else:
                    self._send(404, b'{"detail": "not found"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(("POST", self.path, self.headers.get("Authorization")))
                if self.path == "/api/token/refresh/" and body.get("refresh") == fake.refresh:
                    fake.refresh_calls += 1
                    self._send(200, json.dumps({"access": fake.access}).encode())
                else:
                    self._send(401, b'{"detail": "Token is invalid or expired"}')

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join(timeout=5)


# -- a served backend over a tiny model -----------------------------------------------------

CLASSES = ["circle", "square", "triangle"]
SECRET = "test-secret-0123456789abcdef"


class BrightObjects(torch.nn.Module):
    """Torchvision-style detector: one instance = the pixels brighter than 0.6 (mean of RGB).

    Records the number of images of each call (to check batching).
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        self.calls.append(len(images))
        outputs = []
        for image in images:
            hit = image.mean(dim=0) > 0.6
            height, width = hit.shape
            if hit.any():
                ys, xs = torch.nonzero(hit, as_tuple=True)
                box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]).float()
                outputs.append(
                    {
                        "boxes": box,
                        "scores": torch.tensor([0.9]),
                        "labels": torch.tensor([1]),
                        "masks": hit.float()[None, None],
                    }
                )
            else:
                outputs.append(
                    {
                        "boxes": torch.zeros(0, 4),
                        "scores": torch.zeros(0),
                        "labels": torch.zeros(0, dtype=torch.int64),
                        "masks": torch.zeros(0, 1, height, width),
                    }
                )
        return outputs


def save_tiny_checkpoint(path: Path, seed: int = 0, parent: str | None = None) -> str:
    from robustar_ls.models.checkpoint import Provenance, save_checkpoint
    from robustar_ls.models.zoo import create_classifier

    torch.manual_seed(seed)
    model = create_classifier("resnet18_small", len(CLASSES), width=4)
    return save_checkpoint(
        path,
        model,
        arch="resnet18_small",
        classes=CLASSES,
        image_size=16,
        width=4,
        provenance=Provenance(parent_version=parent),
    )


def untrained_checkpoint(path: Path, classes: list[str]) -> str:
    """An untrained width-4 classifier for ``classes`` (16 px input) saved at ``path``; its
    version."""
    from robustar_ls.models.checkpoint import save_checkpoint
    from robustar_ls.models.zoo import create_classifier

    model = create_classifier("resnet18_small", len(classes), width=4)
    return save_checkpoint(
        path, model, arch="resnet18_small", classes=classes, image_size=16, width=4
    )


def dataset_copy_with_checkpoint(source: Path, tmp_path: Path):
    """A copy of a dataset folder at ``tmp_path/data`` and an untrained width-4 classifier for
    its classes at ``tmp_path/model.pt``: ``(data_root, opened data, checkpoint, version)``."""
    import shutil

    from robustar_ls.data.folders import ImageFolderSplits

    data_root = tmp_path / "data"
    shutil.copytree(source, data_root)
    data = ImageFolderSplits.open(data_root)
    checkpoint = tmp_path / "model.pt"
    return data_root, data, checkpoint, untrained_checkpoint(checkpoint, data.classes)


@dataclass
class Backend:
    """A Flask test client over a tiny classifier and a fake Mask R-CNN."""

    app: Any
    client: Any
    predictor: Any
    cfg: Any
    root: Path
    checkpoint: Path
    version: str
    detector: BrightObjects | None


def use_settings(backend: Backend, **changes: Any) -> None:
    """The backend's predictor runs with ``changes`` to its settings from now on."""
    from dataclasses import replace

    backend.predictor.settings = replace(backend.predictor.settings, **changes)


def local_ref(relpath: str) -> str:
    return f"/data/local-files/?d={relpath}"


def task(relpath: str, task_id: int = 1, **data) -> dict:
    return {"id": task_id, "data": {"image": local_ref(relpath), **data}}


def make_backend(
    tmp_path: Path,
    *,
    segmenter: bool = True,
    batch_size: int = 4,
    cache_size: int = 64,
    jobs=None,
    annotation_hook=None,
    auth: tuple[str, str] | None = None,
    images: dict[str, np.ndarray] | None = None,
    timing: dict | None = None,
) -> Backend:
    from robustar_ls.backend.app import create_app
    from robustar_ls.backend.images import ImageFetcher
    from robustar_ls.backend.model_holder import ModelHolder
    from robustar_ls.backend.predictor import Predictor, PredictorSettings
    from robustar_ls.config import MaskRCNNConfig, ServeConfig
    from robustar_ls.models.maskrcnn import MaskRCNNSegmenter

    root = tmp_path / "docroot"
    images = images or {
        "ds/train/circle/c0.png": two_tone(),
        "ds/train/square/s0.png": two_tone(20, 12, (2, 3, 9, 8)),
        "ds/test/triangle/t0.png": two_tone(16, 16, (5, 5, 11, 11)),
    }
    for rel, array in images.items():
        write_png(root / rel, array)
    checkpoint = tmp_path / "model.pt"
    version = save_tiny_checkpoint(checkpoint)
    cfg = ServeConfig(
        checkpoint=str(checkpoint),
        document_root=str(root),
        label_studio_url="http://127.0.0.1:9",
        cache_dir=str(tmp_path / "cache"),
        secret=SECRET,
        batch_size=batch_size,
        basic_auth_user=auth[0] if auth else "",
        basic_auth_pass=auth[1] if auth else "",
        device="cpu",
    )
    detector = BrightObjects() if segmenter else None
    seg = (
        MaskRCNNSegmenter(detector, MaskRCNNConfig(device="cpu", batch_size=batch_size))
        if detector
        else None
    )
    predictor = Predictor(
        ModelHolder(checkpoint, device="cpu"),
        ImageFetcher.from_config(cfg),
        seg,
        PredictorSettings(
            saliency=cfg.saliency_config(),
            batch_size=batch_size,
            cache_size=cache_size,
            cache_dir=cfg.resolved_cache_dir(),
        ),
        timing=timing,
    )
    app = create_app(cfg, predictor=predictor, jobs=jobs, annotation_hook=annotation_hook)
    return Backend(app, app.test_client(), predictor, cfg, root, checkpoint, version, detector)


class FakeJobs:
    """The TrainingJobs interface: one job at a time; a second start is answered, not queued."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        self.state = "idle"
        self.progress: dict | None = None

    def start(self, payload: dict):
        if self.state == "running":
            return False, self.status()
        self.payloads.append(payload)
        self.state = "running"
        return True, self.status()

    def status(self) -> dict:
        return {
            "state": self.state,
            "started_at": None,
            "finished_at": None,
            "result": None,
            "error": None,
            "progress": self.progress,
        }
