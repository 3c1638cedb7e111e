"""Label Studio on PostgreSQL: the launcher's database settings, the e2e switch
(``$ROBUSTAR_LS_POSTGRES``: skip locally, fail under ``CI=true``) and scripts/postgres.sh."""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from robustar_ls.workflows.label_studio import (
    DB_FILE,
    LabelStudioStartError,
    PostgresDatabase,
    database_env,
    running_label_studio,
)
from tests.label_studio_launcher import POSTGRES_ENV, postgres_server, required_postgres_server

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "postgres.sh"


def test_postgres_url_round_trip_and_label_studio_variables() -> None:
    database = PostgresDatabase.from_url("postgresql://ro%40bot:p%2Fss@127.0.0.1:6543/ls_db")
    assert (database.user, database.password, database.port) == ("ro@bot", "p/ss", 6543)
    assert PostgresDatabase.from_url(database.url()) == database
    assert "p/ss" not in repr(database)
    assert database.env() == {
        "DJANGO_DB": "default",
        "POSTGRE_NAME": "ls_db",
        "POSTGRE_USER": "ro@bot",
        "POSTGRE_PASSWORD": "p/ss",
        "POSTGRE_HOST": "127.0.0.1",
        "POSTGRE_PORT": "6543",
    }
    defaults = PostgresDatabase.from_url("postgres://db.internal")
    assert (defaults.port, defaults.name, defaults.user) == (5432, "postgres", "postgres")
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresDatabase.from_url("127.0.0.1:5432")


def test_database_env_copies_a_sqlite_template_or_names_postgres(tmp_path: Path) -> None:
    template = tmp_path / "template.sqlite3"
    template.write_bytes(b"migrated")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    assert database_env(data_dir, template) == {}
    assert (data_dir / DB_FILE).read_bytes() == b"migrated"
    postgres = PostgresDatabase("127.0.0.1", 5432, "db", "user", "pw")
    other = tmp_path / "other"
    other.mkdir()
    assert database_env(other, postgres)["DJANGO_DB"] == "default"
    assert not (other / DB_FILE).exists()


def test_label_studio_is_started_with_the_postgres_variables(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    binary = tmp_path / "label-studio"
    binary.write_text(f"#!/bin/sh\nenv > {env_file}\nexit 3\n")
    binary.chmod(0o755)
    postgres = PostgresDatabase("127.0.0.1", 6543, "db", "user", "pw")
    with (
        pytest.raises(LabelStudioStartError, match="code 3"),
        running_label_studio(str(binary), tmp_path / "work", db_template=postgres, timeout=30),
    ):
        pass
    seen = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert {key: seen[key] for key in postgres.env()} == postgres.env()
    assert not (tmp_path / "work" / "data" / DB_FILE).exists()


def test_without_a_server_postgres_runs_skip_locally_and_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert postgres_server() is None
    with pytest.raises(pytest.skip.Exception, match=POSTGRES_ENV):
        required_postgres_server()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI=true and {POSTGRES_ENV}"):
        required_postgres_server()
    monkeypatch.setenv(POSTGRES_ENV, "postgresql://u:p@127.0.0.1:5555/postgres")
    assert required_postgres_server().port == 5555


def _have_postgres() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or shutil.which("initdb") is not None


@pytest.mark.skipif(not _have_postgres(), reason="no PostgreSQL server installed (initdb)")
def test_postgres_script_runs_a_command_against_a_throwaway_server(tmp_path: Path) -> None:
    out = tmp_path / "url"
    check = (
        f'echo "${POSTGRES_ENV}" > {out}; python3 -c "import os, socket, urllib.parse as u; '
        f"p = u.urlsplit(os.environ['{POSTGRES_ENV}']); "
        'socket.create_connection((p.hostname, p.port), timeout=10).close()"; exit 7'
    )
    result = subprocess.run(
        [str(SCRIPT), "run", "--", "sh", "-c", check],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 7, result.stderr  # the command's status, after the stop
    server = PostgresDatabase.from_url(out.read_text().strip())
    assert server.host == "127.0.0.1" and server.password
    folder = re.search(r"files in (\S+)\)", result.stderr)
    assert folder and not os.path.exists(folder.group(1))  # stopped and deleted
    with pytest.raises(OSError), socket.create_connection((server.host, server.port), timeout=5):
        pass
