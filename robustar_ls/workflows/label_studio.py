"""Start and stop a real Label Studio server (the demo and the end-to-end tests).

Label Studio lives in its own virtualenv (it pins Django and friends), so it is driven through
its ``label-studio`` executable only. SQLite (or a given PostgreSQL database), a data dir of
our own:

    label-studio start --no-browser --enable-legacy-api-token \
        --internal-host 127.0.0.1 --port <free port>

with ``LABEL_STUDIO_USERNAME/PASSWORD/USER_TOKEN`` creating the first user (the legacy token)
and ``LABEL_STUDIO_LOCAL_FILES_*`` serving files under a temporary document root. A personal
access token is then created the way a user does it: log in, ``POST /api/token/``.

A cold start spends most of its time in database migrations (minutes on a small machine);
``db_template`` copies in an already migrated database (the end-to-end tests cache one per
Label Studio install: ``tests/label_studio_launcher.py``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

import httpx

from robustar_ls.errors import RobustarError
from robustar_ls.labelstudio.client.sdk import LabelStudio

DEFAULT_STARTUP_TIMEOUT = 600.0
DB_FILE = "label_studio.sqlite3"
LOG_TAIL_CHARS = 4000
HOST = "127.0.0.1"  # the servers started here listen on loopback only

TokenKind = Literal["legacy", "pat"]


class LabelStudioStartError(RobustarError, RuntimeError):
    """Label Studio did not come up; the message ends with the tail of its log."""


@dataclass(frozen=True)
class LabelStudioServer:
    """A running Label Studio server and the credentials of its only user."""

    url: str
    username: str
    password: str
    legacy_token: str
    pat: str
    document_root: Path
    data_dir: Path
    log_path: Path
    startup_seconds: float
    database: str = "sqlite"
    _clients: dict[str, LabelStudio] = field(default_factory=dict, repr=False, compare=False)

    def token(self, kind: TokenKind = "legacy") -> str:
        """The API key of one kind: ``legacy`` (``Token`` header) or ``pat`` (JWT refresh)."""
        tokens = {"legacy": self.legacy_token, "pat": self.pat}
        if kind not in tokens:
            raise ValueError(f"unknown token kind {kind!r}; use 'legacy' or 'pat'")
        return tokens[kind]

    def client(self, kind: TokenKind = "legacy") -> LabelStudio:
        """A label-studio-sdk client authenticated with the given kind of token."""
        if kind not in self._clients:
            self._clients[kind] = LabelStudio(base_url=self.url, api_key=self.token(kind))
        return self._clients[kind]

    def auth_headers(self) -> dict[str, str]:
        """Headers for plain HTTP requests (``/data/local-files``...) with the legacy token."""
        return {"Authorization": f"Token {self.legacy_token}"}

    def local_files_url(self, path: Path) -> str:
        """The ``/data/local-files/?d=...`` URL Label Studio serves ``path`` under."""
        relative = Path(path).resolve().relative_to(self.document_root)
        return f"/data/local-files/?d={quote(relative.as_posix(), safe='/')}"


@dataclass(frozen=True)
class PostgresDatabase:
    """A PostgreSQL database for Label Studio: ``DJANGO_DB=default`` and ``POSTGRE_*``."""

    host: str
    port: int
    name: str
    user: str
    password: str = field(repr=False)

    @classmethod
    def from_url(cls, url: str) -> PostgresDatabase:
        """``postgresql://USER:PASSWORD@HOST:PORT/NAME`` (port 5432 and name ``postgres``
        when left out)."""
        parts = urlsplit(url)
        if parts.scheme not in {"postgresql", "postgres"} or not parts.hostname:
            raise ValueError(f"not a postgresql://user:password@host:port/name URL: {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            name=unquote(parts.path.lstrip("/")) or "postgres",
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
        )

    def url(self) -> str:
        """The ``postgresql://`` URL of this database (with the password)."""
        user, password = quote(self.user, safe=""), quote(self.password, safe="")
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{quote(self.name)}"

    def env(self) -> dict[str, str]:
        """The variables that make ``label-studio`` use this database."""
        return {
            "DJANGO_DB": "default",
            "POSTGRE_NAME": self.name,
            "POSTGRE_USER": self.user,
            "POSTGRE_PASSWORD": self.password,
            "POSTGRE_HOST": self.host,
            "POSTGRE_PORT": str(self.port),
        }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def base_env(data_dir: Path) -> dict[str, str]:
    """Environment for any ``label-studio`` command: own data dir, no network calls.

    Without the empty Sentry DSNs and the disabled version check, commands can hang for
    minutes on a machine without internet access.
    """
    env = dict(os.environ)
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        DJANGO_DB="sqlite",  # Label Studio's default; `PostgresDatabase.env` overrides it
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LOG_LEVEL="INFO",
    )
    return env


def server_env(
    data_dir: Path, document_root: Path, username: str, password: str, token: str
) -> dict[str, str]:
    """Environment for ``label-studio start``: first user, legacy token, local files."""
    env = base_env(data_dir)
    env.update(
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        # The ML backend runs on this machine: let Label Studio call loopback addresses.
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
    )
    return env


def start_command(binary: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``label-studio start`` command line."""
    return [
        binary,
        "start",
        "--no-browser",
        "--enable-legacy-api-token",
        "--internal-host",
        host,
        "--port",
        str(port),
    ]


def log_tail(log_path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of a log file ('' when it does not exist)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return text[-chars:]


def spawn(command: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, stdout and stderr into ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], grace_seconds: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it if it is still alive after ``grace_seconds``."""
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=grace_seconds)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``process`` (it may have just exited)."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def wait_for_health(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    """Poll ``GET /health`` until it answers 200; fail early if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabelStudioStartError(
                f"label-studio exited with code {process.returncode} before /health answered;"
                f" log {log_path}:\n{log_tail(log_path)}"
            )
        if _healthy(url):
            return
        time.sleep(1.0)
    raise LabelStudioStartError(
        f"label-studio did not answer {url}/health within {timeout:.0f} s"
        f"; log {log_path}:\n{log_tail(log_path)}"
    )


def _healthy(url: str) -> bool:
    """Whether ``/health`` answers 200 now."""
    try:
        return httpx.get(f"{url}/health", timeout=5, follow_redirects=True).status_code == 200
    except httpx.HTTPError:
        return False


def create_personal_access_token(url: str, username: str, password: str) -> str:
    """Log in like a browser and create a personal access token (a JWT refresh token).

    ``GET /user/login/`` sets the CSRF cookie, the form ``POST`` opens a session, and
    ``POST /api/token/`` (with the CSRF header) answers ``{"token": "<refresh token>"}``.
    """
    with httpx.Client(follow_redirects=True) as session:
        session.get(f"{url}/user/login/", timeout=30).raise_for_status()
        response = session.post(
            f"{url}/user/login/",
            data={
                "email": username,
                "password": password,
                "csrfmiddlewaretoken": session.cookies["csrftoken"],
            },
            headers={"Referer": f"{url}/user/login/"},
            follow_redirects=False,
            timeout=30,
        )
        if response.status_code != 302:
            raise LabelStudioStartError(f"login as {username} failed: {response.status_code}")
        response = session.post(
            f"{url}/api/token/",
            headers={"X-CSRFToken": session.cookies["csrftoken"], "Referer": f"{url}/"},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["token"])


def database_env(data_dir: Path, db_template: Path | PostgresDatabase | None) -> dict[str, str]:
    """Environment for the database: a `PostgresDatabase`'s variables; for SQLite, nothing
    (``db_template`` is copied into ``data_dir`` first when no database is there yet)."""
    if isinstance(db_template, PostgresDatabase):
        return db_template.env()
    if db_template is not None and not (data_dir / DB_FILE).exists():
        shutil.copyfile(db_template, data_dir / DB_FILE)
    return {}


@dataclass(frozen=True)
class Credentials:
    """The first user of a Label Studio server and its legacy API token."""

    username: str
    password: str
    legacy_token: str

    @classmethod
    def random(cls, username: str = "robustar-e2e@example.com") -> Credentials:
        return cls(username, secrets.token_urlsafe(16), secrets.token_hex(20))


@contextmanager
def running_label_studio(
    binary: str,
    workdir: Path,
    db_template: Path | PostgresDatabase | None = None,
    timeout: float = DEFAULT_STARTUP_TIMEOUT,
    *,
    credentials: Credentials | None = None,
    port: int | None = None,
    document_root: Path | None = None,
    personal_access_token: bool = True,
) -> Iterator[LabelStudioServer]:
    """Run ``label-studio start`` under ``workdir``, on the loopback interface only
    (:data:`HOST`), until the context exits.

    ``workdir`` receives ``data/`` (database, media; kept, so a rerun finds its projects),
    ``documents/`` (the local-files document root, unless ``document_root`` is given) and
    ``label-studio.log``. ``db_template``: a migrated SQLite database, copied in when none
    exists yet so that no migration runs, or a `PostgresDatabase` to run on instead of SQLite
    (migrated at start when new). ``port`` defaults to a free one. With
    ``personal_access_token`` a PAT is created for the user (Label Studio keeps one per user:
    a second server on the same data dir answers 409, so reruns pass False).
    """
    data_dir = workdir / "data"
    document_root = Path(document_root or workdir / "documents")
    data_dir.mkdir(parents=True, exist_ok=True)
    document_root.mkdir(parents=True, exist_ok=True)
    document_root = document_root.resolve()
    creds = credentials or Credentials.random()
    port = port or free_port(HOST)
    url = f"http://{HOST}:{port}"
    if _healthy(url):
        raise LabelStudioStartError(f"something already answers on {url}; choose another port")
    log_path = workdir / "label-studio.log"
    env = server_env(data_dir, document_root, creds.username, creds.password, creds.legacy_token)
    env.update(database_env(data_dir, db_template))
    started = time.monotonic()
    process = spawn(start_command(binary, port, HOST), env, log_path)
    try:
        wait_for_health(url, process, log_path, timeout)
        startup_seconds = time.monotonic() - started
        yield LabelStudioServer(
            url=url,
            username=creds.username,
            password=creds.password,
            legacy_token=creds.legacy_token,
            pat=(
                create_personal_access_token(url, creds.username, creds.password)
                if personal_access_token
                else ""
            ),
            document_root=document_root,
            data_dir=data_dir,
            log_path=log_path,
            startup_seconds=startup_seconds,
            database="sqlite" if env["DJANGO_DB"] == "sqlite" else "postgresql",
        )
    finally:
        stop_process(process)
