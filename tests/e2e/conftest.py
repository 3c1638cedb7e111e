"""Fixtures that run a real Label Studio server.

See robustar_ls/workflows/label_studio.py (the launcher) and tests/label_studio_launcher.py.

``label_studio`` is the SQLite server (``label_studio_sqlite``). A test marked
``@pytest.mark.postgresql`` (one that stores data: import, sync, score write-back, prefetch,
Start Training) runs twice, ``[sqlite]`` and ``[postgresql]``; the second gets
``label_studio_postgresql``, a server on a fresh database in ``$ROBUSTAR_LS_POSTGRES``.
Without that variable the ``[postgresql]`` runs skip, and fail under ``CI=true``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustar_ls.workflows.label_studio import LabelStudioServer, running_label_studio
from tests.label_studio_launcher import (
    INSTALL_HINT,
    create_database,
    db_cache_enabled,
    drop_database,
    find_label_studio_bin,
    migrated_database,
    required_postgres_server,
    startup_timeout,
)

from .backend_fixtures import backend, dataset  # noqa: F401  (shared e2e fixtures)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_NAME = "robustar-ls-label-studio"
DATABASES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgresql: also runs against Label Studio on PostgreSQL ([postgresql])"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``postgresql`` run once per database: ``[sqlite]`` and ``[postgresql]``."""
    marked = metafunc.definition.get_closest_marker("postgresql") is not None
    if marked and "label_studio" in metafunc.fixturenames:
        metafunc.parametrize("label_studio", DATABASES, indirect=True)


def _db_cache_dir(config: pytest.Config) -> Path:
    """Where the migrated database template lives: pytest's cache dir, else a temp dir."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir(CACHE_NAME))
    return Path(tempfile.gettempdir()) / CACHE_NAME


@pytest.fixture(scope="session")
def label_studio_bin() -> str:
    """Path of the ``label-studio`` executable; skips the e2e tests when there is none."""
    try:
        binary = find_label_studio_bin(REPO_ROOT)
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    if binary is None:
        pytest.skip(INSTALL_HINT)
    return binary


@pytest.fixture(scope="session")
def label_studio_db_template(request: pytest.FixtureRequest, label_studio_bin: str) -> Path | None:
    """The migrated SQLite database of this install (None with ROBUSTAR_LS_E2E_DB_CACHE=0)."""
    if not db_cache_enabled():
        return None
    return migrated_database(label_studio_bin, _db_cache_dir(request.config), startup_timeout())


@pytest.fixture(scope="session")
def label_studio_sqlite(
    label_studio_bin: str,
    label_studio_db_template: Path | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LabelStudioServer]:
    """A real Label Studio server on SQLite for the whole session, stopped at the end.

    Yields a `LabelStudioServer`: ``url``, ``username``/``password``, ``legacy_token``,
    ``pat``, ``document_root`` (served under ``/data/local-files``) and ``client(kind)``.
    """
    workdir = tmp_path_factory.mktemp("label-studio")
    with running_label_studio(
        label_studio_bin, workdir, db_template=label_studio_db_template, timeout=startup_timeout()
    ) as server:
        yield server


@pytest.fixture(scope="session")
def label_studio_postgresql(
    label_studio_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabelStudioServer]:
    """Like ``label_studio_sqlite``, on a new database in ``$ROBUSTAR_LS_POSTGRES`` (migrated
    at start, dropped at the end). Skips without the variable; fails under ``CI=true``."""
    server = required_postgres_server()
    database = create_database(label_studio_bin, server)
    try:
        workdir = tmp_path_factory.mktemp("label-studio-postgresql")
        with running_label_studio(
            label_studio_bin, workdir, db_template=database, timeout=startup_timeout()
        ) as running:
            yield running
    finally:
        drop_database(label_studio_bin, server, database)


@pytest.fixture
def label_studio(request: pytest.FixtureRequest) -> LabelStudioServer:
    """The Label Studio server of this test: SQLite, or the ``[postgresql]`` run's server."""
    database = getattr(request, "param", "sqlite")
    return request.getfixturevalue(f"label_studio_{database}")


@pytest.fixture(autouse=True)
def no_page_past_the_end(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that talks to Label Studio leaves no ``Invalid page`` in its log: a listing that
    asks for one page past the last (Label Studio logs a NotFound traceback each time)."""
    if "label_studio" not in request.fixturenames:
        yield
        return
    log_path = request.getfixturevalue("label_studio").log_path
    start = log_path.stat().st_size if log_path.is_file() else 0
    yield
    with log_path.open("rb") as log:
        log.seek(start)
        written = log.read().decode("utf-8", errors="replace")
    pages = [line for line in written.splitlines() if "404" in line and "page=" in line]
    assert "Invalid page" not in written, f"a listing asked past the last page: {pages[:3]}"


@pytest.fixture
def local_files_dir(label_studio: LabelStudioServer, request: pytest.FixtureRequest) -> Path:
    """A fresh folder under the server's local-files document root, one per test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    folder = label_studio.document_root / name
    folder.mkdir(parents=True, exist_ok=False)
    return folder
