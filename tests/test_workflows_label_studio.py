"""The fixture's helpers, with stand-in executables (no Label Studio needed)."""

from __future__ import annotations

import os
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from robustar_ls.workflows.label_studio import (
    LabelStudioServer,
    LabelStudioStartError,
    _healthy,
    create_personal_access_token,
    free_port,
    running_label_studio,
)
from tests.http_support import local_http_server
from tests.label_studio_launcher import BIN_ENV, find_label_studio_bin


def _script(path: Path, body: str) -> str:
    """Write an executable shell script standing in for ``label-studio``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def test_env_var_wins_over_repo_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _script(tmp_path / ".venv-ls" / "bin" / "label-studio", "exit 0")
    explicit = _script(tmp_path / "elsewhere" / "label-studio", "exit 0")
    monkeypatch.setenv(BIN_ENV, explicit)
    assert find_label_studio_bin(tmp_path) == explicit


def test_repo_venv_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BIN_ENV, raising=False)
    local = _script(tmp_path / ".venv-ls" / "bin" / "label-studio", "exit 0")
    assert find_label_studio_bin(tmp_path) == local


def test_missing_explicit_bin_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BIN_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=BIN_ENV):
        find_label_studio_bin(tmp_path)


def test_free_port_is_bindable() -> None:
    assert 0 < free_port() < 65536


def test_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    binary = _script(tmp_path / "bin" / "label-studio", "echo 'migration boom'; exit 3")
    with (
        pytest.raises(LabelStudioStartError, match=r"(?s)code 3.*migration boom"),
        running_label_studio(binary, tmp_path / "work", timeout=60),
    ):
        pass


def test_server_that_never_answers_times_out_and_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    binary = _script(tmp_path / "bin" / "label-studio", f"echo $$ > {pid_file}; exec sleep 600")
    with (
        pytest.raises(LabelStudioStartError, match="did not answer"),
        running_label_studio(binary, tmp_path / "work", timeout=2),
    ):
        pass
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_local_files_url_is_relative_and_quoted(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    server = LabelStudioServer(
        url="http://127.0.0.1:1",
        username="u",
        password="p",
        legacy_token="legacy",
        pat="a.b.c",
        document_root=root,
        data_dir=root / "data",
        log_path=root / "log",
        startup_seconds=0.0,
    )
    assert server.local_files_url(root / "ds" / "a b.png") == "/data/local-files/?d=ds/a%20b.png"
    assert server.token("pat") == "a.b.c"
    with pytest.raises(ValueError, match="token kind"):
        server.token("jwt")  # type: ignore[arg-type]


class _FakeLogin(BaseHTTPRequestHandler):
    """Django-like login: GET sets csrftoken, POST rotates it and redirects, then a token."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _cookies(self) -> dict[str, str]:
        jar = SimpleCookie(self.headers.get("Cookie", ""))
        return {key: morsel.value for key, morsel in jar.items()}

    def _answer(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, b'{"status": "UP"}')
        elif self.path == "/user/login/":
            self._answer(200, b"form", {"Set-Cookie": "csrftoken=first; Path=/"})
        else:
            self._answer(404)

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"] or 0)).decode())
        cookies = self._cookies()
        if self.path == "/user/login/":
            if form.get("csrfmiddlewaretoken") != ["first"] or form.get("password") != ["pw"]:
                self._answer(403)
                return
            rotated = {"Set-Cookie": "csrftoken=second; Path=/", "Location": "/projects/"}
            self._answer(302, b"", rotated)
        elif self.path == "/api/token/":
            if self.headers.get("X-CSRFToken") != "second" or cookies.get("csrftoken") != "second":
                self._answer(403)
                return
            self._answer(201, b'{"token": "refresh-token"}')
        else:
            self._answer(404)


@pytest.fixture()
def fake_login_url():
    with local_http_server(_FakeLogin) as url:
        yield url


def test_personal_access_token_follows_the_csrf_login(fake_login_url: str) -> None:
    token = create_personal_access_token(fake_login_url, "me@example.com", "pw")
    assert token == "refresh-token"


def test_personal_access_token_reports_a_refused_login(fake_login_url: str) -> None:
    with pytest.raises(LabelStudioStartError, match="login as me@example.com failed: 403"):
        create_personal_access_token(fake_login_url, "me@example.com", "wrong")


def test_health_check(fake_login_url: str) -> None:
    assert _healthy(fake_login_url)
    assert not _healthy(f"http://127.0.0.1:{free_port()}")
