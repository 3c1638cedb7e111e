"""docker-compose.yml against the Compose specification, and everything it names exists.

No Docker engine runs on the build machines, so this is the check that the file would work:
schema-valid, every ${VARIABLE} documented in .env.example, every bind-mounted path and build
context present, container ports matching what the commands listen on, and the robustar-ls
commands parse with the real CLI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from robustar_ls.cli import get_args_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())


def test_file_follows_the_compose_specification():
    jsonschema.validate(COMPOSE, SCHEMA)


def test_every_variable_is_in_env_example():
    names = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert names, "the compose file should take its settings from .env"
    assert names <= documented, f"undocumented variables: {sorted(names - documented)}"


def test_bind_mounts_and_build_contexts_exist():
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), f"{name}: missing {source}"
            else:
                assert source in COMPOSE.get("volumes", {}), f"{name}: undeclared volume {source}"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file()


def test_dockerfile_copies_existing_paths():
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def _robustar_commands():
    for name, service in COMPOSE["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[0] == "robustar-ls":
            yield name, service, command


@pytest.mark.parametrize("name", [name for name, _, _ in _robustar_commands()])
def test_robustar_commands_parse_and_ports_match(name):
    service, command = next((s, c) for n, s, c in _robustar_commands() if n == name)
    # Variables are substituted by compose; give them plausible values for parsing.
    argv = [re.sub(r"\$\{\w+\}", "x", part) for part in command[1:]]
    args = get_args_parser().parse_args(argv)
    if "--port" in argv:
        port = str(args.port)
        assert any(p.split(":")[-1] == port for p in service.get("ports", [])), (name, port)
        assert port in " ".join(service["healthcheck"]["test"])


def test_label_studio_serves_the_shared_data_folder():
    ls = COMPOSE["services"]["label-studio"]
    root = ls["environment"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    assert ls["image"].endswith(":1.23.2")  # the version the e2e tests run
    for service in ("label-studio", "backend"):
        mounts = {v.split(":")[1]: v.split(":")[0] for v in COMPOSE["services"][service]["volumes"]}
        assert mounts.get(root) == "./workspace/data", service
    backend = COMPOSE["services"]["backend"]["command"]
    assert backend[backend.index("--document-root") + 1] == root
    assert "8080" in ls["ports"][0] and "--enable-legacy-api-token" in ls["command"]


def test_gpu_trainer_is_a_profile_with_a_gpu_reserved():
    trainer = COMPOSE["services"]["trainer"]
    assert trainer["profiles"] == ["gpu"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_the_backend_reaches_label_studio_and_the_dataset():
    """Start Training, the influence rerun and the prefetch need Label Studio's URL on the
    compose network, the dataset folder and the project title (env alone is not read)."""
    command = COMPOSE["services"]["backend"]["command"]
    flags = {command[i]: command[i + 1] for i in range(len(command) - 1)}
    assert flags["--label-studio-url"] == "http://label-studio:8080"
    assert flags["--data"] == "/data/${DATASET}" and flags["--project"] == "${PROJECT}"
    trainer = COMPOSE["services"]["trainer"]["command"]
    assert trainer[trainer.index("--data") + 1] == flags["--data"]
