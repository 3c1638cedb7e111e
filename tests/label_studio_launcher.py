"""Test-only helpers around the Label Studio launcher (``robustar_ls.workflows.label_studio``):
finding the executable, the startup timeout and database cache switches read from the
environment, a migrated-database template, and a local-files storage for a project; and, for
the PostgreSQL runs, the server named by ``$ROBUSTAR_LS_POSTGRES`` (``scripts/postgres.sh``
starts a throwaway one) and a fresh database in it per test session."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from robustar_ls.workflows.label_studio import (
    DB_FILE,
    DEFAULT_STARTUP_TIMEOUT,
    LabelStudioStartError,
    PostgresDatabase,
    base_env,
    log_tail,
    spawn,
    stop_process,
)

BIN_ENV = "ROBUSTAR_LS_LABEL_STUDIO_BIN"


CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints" / "label-studio.txt"


TIMEOUT_ENV = "ROBUSTAR_LS_E2E_STARTUP_TIMEOUT"


DB_CACHE_ENV = "ROBUSTAR_LS_E2E_DB_CACHE"


POSTGRES_ENV = "ROBUSTAR_LS_POSTGRES"


POSTGRES_HINT = (
    f"{POSTGRES_ENV} is not set: the PostgreSQL variants need a server "
    f"({POSTGRES_ENV}=postgresql://USER:PASSWORD@HOST:PORT/postgres); `make test-postgres` "
    "starts a throwaway one (scripts/postgres.sh)"
)


INSTALL_HINT = (
    "Label Studio is not installed: run `make venv-ls` (creates .venv-ls "
    "with label-studio==1.23.2) or set ROBUSTAR_LS_LABEL_STUDIO_BIN=/path/to/label-studio"
)


def constraints() -> list[Requirement]:
    """The pins of constraints/label-studio.txt (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in CONSTRAINTS.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def find_label_studio_bin(repo_root: Path) -> str | None:
    """``$ROBUSTAR_LS_LABEL_STUDIO_BIN``, else ``.venv-ls/bin/label-studio``, else PATH.

    Raises `FileNotFoundError` when the environment variable names a missing file: an
    explicit setting that does not work must fail loudly, not skip.
    """
    explicit = os.environ.get(BIN_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"{BIN_ENV}={explicit} is not an executable file")
        return explicit
    local = repo_root / ".venv-ls" / "bin" / "label-studio"
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which("label-studio")


def startup_timeout() -> float:
    """Seconds to wait for migrations and for ``/health`` (``$ROBUSTAR_LS_E2E_STARTUP_TIMEOUT``)."""
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_STARTUP_TIMEOUT))


def db_cache_enabled() -> bool:
    """Whether to reuse a migrated database (``ROBUSTAR_LS_E2E_DB_CACHE=0`` turns it off)."""
    return os.environ.get(DB_CACHE_ENV, "1").lower() not in {"0", "false", "no", "off"}


def install_key(binary: str) -> str:
    """A key that changes when this Label Studio install changes (pip rewrites the script)."""
    resolved = Path(binary).resolve()
    stamp = f"{resolved}:{resolved.stat().st_mtime_ns}"
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def migrated_database(binary: str, cache_dir: Path, timeout: float) -> Path:
    """A migrated, user-less SQLite database for this install, made once and cached.

    ``label-studio version`` applies all migrations to its data dir and exits without
    creating a user, which is exactly the template wanted.
    """
    cached = cache_dir / f"label-studio-{install_key(binary)}.sqlite3"
    if cached.exists():
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="migrate-") as scratch:
        data_dir = Path(scratch)
        log_path = data_dir / "migrate.log"
        process = spawn([binary, "version"], base_env(data_dir), log_path)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(process)
            raise LabelStudioStartError(
                f"`label-studio version` (migrations) took over {timeout:.0f} s:\n"
                f"{log_tail(log_path)}"
            ) from None
        if returncode != 0 or not (data_dir / DB_FILE).exists():
            raise LabelStudioStartError(
                f"`label-studio version` failed with code {returncode}:\n{log_tail(log_path)}"
            )
        partial = cached.with_suffix(".partial")
        shutil.copyfile(data_dir / DB_FILE, partial)
        os.replace(partial, cached)
    return cached


def in_ci() -> bool:
    """Whether this is a CI run (``CI=true``, as CI services set it): missing servers fail."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def postgres_server() -> PostgresDatabase | None:
    """The PostgreSQL server of ``$ROBUSTAR_LS_POSTGRES`` (a ``postgresql://`` URL), if set."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    return PostgresDatabase.from_url(url) if url else None


def required_postgres_server() -> PostgresDatabase:
    """`postgres_server`, or skip the calling test without one (fail it under ``CI=true``)."""
    server = postgres_server()
    if server is None:
        if in_ci():
            pytest.fail(f"CI=true and {POSTGRES_HINT}", pytrace=False)
        pytest.skip(POSTGRES_HINT)
    return server


def label_studio_python(binary: str) -> str:
    """The interpreter of the ``label-studio`` install (its virtualenv has ``psycopg``)."""
    sibling = Path(binary).parent / "python"
    if os.access(sibling, os.X_OK):
        return str(sibling)
    first = Path(binary).read_text(encoding="utf-8", errors="replace").splitlines()[0]
    if not first.startswith("#!"):
        raise FileNotFoundError(f"no Python interpreter found for {binary}")
    return first[2:].split()[0]


_SQL = """
import sys
import psycopg
with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=30) as connection:
    connection.execute(sys.argv[2])
"""


def run_sql(binary: str, server: PostgresDatabase, statement: str) -> None:
    """Run one SQL statement on ``server`` with ``psycopg`` from the Label Studio install."""
    result = subprocess.run(
        [label_studio_python(binary), "-c", _SQL, server.url(), statement],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise LabelStudioStartError(
            f"PostgreSQL at {server.host}:{server.port} refused {statement!r}:\n"
            f"{result.stderr[-2000:]}"
        )


def create_database(binary: str, server: PostgresDatabase) -> PostgresDatabase:
    """A new, empty database on ``server`` (Label Studio migrates it at its first start)."""
    name = f"robustar_e2e_{secrets.token_hex(4)}"
    run_sql(binary, server, f'CREATE DATABASE "{name}"')
    return PostgresDatabase(server.host, server.port, name, server.user, server.password)


def drop_database(binary: str, server: PostgresDatabase, database: PostgresDatabase) -> None:
    """Drop a database made by `create_database` (Label Studio must have stopped)."""
    run_sql(binary, server, f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')
