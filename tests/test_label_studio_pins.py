"""constraints/label-studio.txt: the pins that keep Label Studio starting, used wherever it is
installed (the Makefile's venv-ls; CI runs `make venv-ls`), for the version the tests run.

tests/e2e/test_label_studio_user_start.py checks the installed Label Studio against the file
and starts it the way a user does.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.label_studio_launcher import CONSTRAINTS, constraints

ROOT = Path(__file__).resolve().parents[1]


def _makefile_version() -> str:
    found = re.search(r"^LABEL_STUDIO_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, "the Makefile names the Label Studio version"
    return found.group(1)


def test_sentry_sdk_3_is_excluded() -> None:
    pins = {req.name: req.specifier for req in constraints()}
    assert not pins["sentry-sdk"].contains("3.0.1")  # Unknown option 'send_default_pii'
    assert pins["sentry-sdk"].contains("2.20.0")
    assert "newer Label Studio" in CONSTRAINTS.read_text()  # how to move on is written down


def test_every_label_studio_install_uses_the_constraints() -> None:
    installs = [
        line
        for path in ("Makefile", "Dockerfile", ".ci/run")
        for line in (ROOT / path).read_text().splitlines()
        if re.search(r"pip install .*label-studio==", line)
    ]
    assert installs, "the Makefile installs Label Studio"
    for line in installs:
        assert '"label-studio==$(LABEL_STUDIO_VERSION)"' in line
        assert line.rstrip().endswith("-c constraints/label-studio.txt"), line
    assert re.search(
        r"\.installed: .*constraints/label-studio.txt", (ROOT / "Makefile").read_text()
    )


def test_compose_runs_the_version_the_makefile_installs() -> None:
    """docker-compose.yml runs the official image (its own locked dependencies): the same
    Label Studio release as .venv-ls, so moving to a newer one moves both."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["label-studio"]["image"]
    assert image == f"heartexlabs/label-studio:{_makefile_version()}"
