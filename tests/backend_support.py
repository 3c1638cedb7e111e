"""Helpers for the backend tests: synthetic images, a fake Label Studio file server, tokens."""

from __future__ import annotations

import io
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import numpy as np
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
