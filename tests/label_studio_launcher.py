"""Test-only helpers around the Label Studio launcher (``robustar_ls.workflows.label_studio``):
finding the executable, the startup timeout and database cache switches read from the
environment, a migrated-database template, and a local-files storage for a project."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from robustar_ls.workflows.label_studio import (
    DB_FILE,
    DEFAULT_STARTUP_TIMEOUT,
    LabelStudioStartError,
    base_env,
    log_tail,
    spawn,
    stop_process,
)

BIN_ENV = "ROBUSTAR_LS_LABEL_STUDIO_BIN"


TIMEOUT_ENV = "ROBUSTAR_LS_E2E_STARTUP_TIMEOUT"


DB_CACHE_ENV = "ROBUSTAR_LS_E2E_DB_CACHE"


INSTALL_HINT = (
    "Label Studio is not installed: run `make venv-ls` (creates .venv-ls "
    "with label-studio==1.23.2) or set ROBUSTAR_LS_LABEL_STUDIO_BIN=/path/to/label-studio"
)


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
