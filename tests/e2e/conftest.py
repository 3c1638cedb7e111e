"""Fixtures that run a real Label Studio server.

See robustar_ls/workflows/label_studio.py (the launcher) and tests/label_studio_launcher.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustar_ls.workflows.label_studio import LabelStudioServer, running_label_studio
from tests.label_studio_launcher import (
    INSTALL_HINT,
    db_cache_enabled,
    find_label_studio_bin,
    migrated_database,
    startup_timeout,
)

from .backend_fixtures import backend, dataset  # noqa: F401  (shared e2e fixtures)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_NAME = "robustar-ls-label-studio"


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
def label_studio(
    request: pytest.FixtureRequest,
    label_studio_bin: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LabelStudioServer]:
    """A real Label Studio server for the whole session, stopped at the end.

    Yields a `LabelStudioServer`: ``url``, ``username``/``password``, ``legacy_token``,
    ``pat``, ``document_root`` (served under ``/data/local-files``) and ``client(kind)``.
    """
    template = None
    if db_cache_enabled():
        template = migrated_database(
            label_studio_bin, _db_cache_dir(request.config), startup_timeout()
        )
    workdir = tmp_path_factory.mktemp("label-studio")
    with running_label_studio(
        label_studio_bin, workdir, db_template=template, timeout=startup_timeout()
    ) as server:
        yield server


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
