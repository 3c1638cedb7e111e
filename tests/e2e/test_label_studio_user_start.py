"""Label Studio, installed with constraints/label-studio.txt, starts the way a user starts it.

Not through the launcher (its ``base_env`` sets ``SENTRY_DSN=""``, which hid the sentry-sdk 3
crash): ``label-studio start`` with only the documented variables and a clean environment,
then a login through the login page and an API call with the user's token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from robustar_ls.labelstudio.client.sdk import LabelStudio
from robustar_ls.workflows.label_studio import (
    DB_FILE,
    create_personal_access_token,
    free_port,
    spawn,
    stop_process,
    wait_for_health,
)
from tests.label_studio_launcher import constraints, label_studio_python, startup_timeout

pytestmark = pytest.mark.e2e


def _installed_version(python: str, name: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def test_the_installed_label_studio_satisfies_the_constraints(label_studio_bin: str) -> None:
    python = label_studio_python(label_studio_bin)
    for requirement in constraints():
        version = _installed_version(python, requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement.name} {version} in {python} breaks {requirement}: reinstall with "
            "`pip install label-studio==... -c constraints/label-studio.txt` (make venv-ls)"
        )


def _user_env(home: Path, data_dir: Path, documents: Path) -> dict[str, str]:
    """What a user's shell has (PATH, HOME, locale) plus the documented variables only."""
    env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL") if key in os.environ}
    env.update(
        HOME=str(home),
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(documents),
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_USERNAME="someone@example.com",
        LABEL_STUDIO_PASSWORD="a-long-password-1",
        LABEL_STUDIO_USER_TOKEN="0123456789abcdef0123456789abcdef01234567",
    )
    return env


def test_label_studio_starts_as_documented_and_the_user_logs_in(
    label_studio_bin: str, label_studio_db_template: Path | None, tmp_path: Path
) -> None:
    data_dir, documents, home = tmp_path / "data", tmp_path / "documents", tmp_path / "home"
    for folder in (data_dir, documents, home):
        folder.mkdir()
    if label_studio_db_template is not None:  # the migrations, already run (only the time)
        shutil.copyfile(label_studio_db_template, data_dir / DB_FILE)
    env = _user_env(home, data_dir, documents)
    assert not any("SENTRY" in key for key in env)
    port = free_port()
    command = [label_studio_bin, "start", "--port", str(port), "--no-browser"]
    command.append("--enable-legacy-api-token")
    log_path = tmp_path / "label-studio.log"
    process = spawn(command, env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log_path, startup_timeout())
        pat = create_personal_access_token(url, env["LABEL_STUDIO_USERNAME"], "a-long-password-1")
        for token in (pat, env["LABEL_STUDIO_USER_TOKEN"]):
            whoami = LabelStudio(base_url=url, api_key=token).users.whoami()
            assert whoami.email == env["LABEL_STUDIO_USERNAME"]
    finally:
        stop_process(process)
    assert "Unknown option" not in log_path.read_text(errors="replace")
