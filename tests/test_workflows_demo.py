"""The demo workflow's steps that need no Label Studio: checks, credentials, dataset + model."""

from __future__ import annotations

import os
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from robustar_ls.config import DemoConfig
from robustar_ls.models.checkpoint import read_version
from robustar_ls.workflows import demo
from robustar_ls.workflows.demo import (
    DemoError,
    demo_credentials,
    prepare_model,
    run_demo,
)


def test_missing_label_studio_is_a_clear_error(tmp_path):
    cfg = DemoConfig(workdir=str(tmp_path), label_studio_bin=str(tmp_path / "nope"))
    with pytest.raises(DemoError, match="make demo"):
        run_demo(cfg)
    assert list(tmp_path.iterdir()) == []  # nothing made before the check


def test_credentials_are_made_once_and_private(tmp_path):
    path = tmp_path / "w" / "credentials.json"
    first = demo_credentials(path)
    assert demo_credentials(path) == first
    assert first.password and first.legacy_token
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_prepare_model_calls_the_library_and_reuses_its_outputs(tmp_path, caplog):
    data, model = tmp_path / "documents" / "patch", tmp_path / "model.pt"
    cfg = DemoConfig(per_class=2, epochs=1)
    with caplog.at_level("INFO", logger="robustar_ls.workflows.demo"):
        prepare_model(cfg, data, model, progress=None)
    assert (data / "spurious.json").is_file() and model.is_file()
    # the split counts are a dict: the line once failed to format ("%d" of a dict)
    assert any(m.startswith("demo: wrote 8 train, ") for m in caplog.messages)
    version = read_version(model)
    prepare_model(cfg, data, model, progress=None)  # a rerun keeps both
    assert read_version(model) == version


def test_run_demo_passes_opened_servers_and_sets_no_environment(tmp_path, monkeypatch, capsys):
    binary = tmp_path / "label-studio"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    calls = {}
    server = SimpleNamespace(
        url="http://ls.test:1",
        username="u",
        password="p",
        legacy_token="tok",
        log_path=tmp_path / "w" / "label-studio" / "label-studio.log",
    )

    @contextmanager
    def fake_label_studio(bin_, workdir, **kwargs):
        calls["label_studio"] = (bin_, kwargs["document_root"])
        yield server

    @contextmanager
    def fake_backend(checkpoint, document_root, data, port, ls, log_path):
        calls["backend"] = (checkpoint, ls)
        yield "http://backend.test:2"

    def fake_import_and_rank(ls, data, backend_url, work, secret, basic_auth):
        calls["import"] = (ls, backend_url, secret, basic_auth)
        return {"project_url": "http://ls.test:1/projects/1"}

    monkeypatch.setattr(demo, "prepare_model", lambda *args: calls.setdefault("prepare", args))
    monkeypatch.setattr(demo, "running_label_studio", fake_label_studio)
    monkeypatch.setattr(demo, "running_backend", fake_backend)
    monkeypatch.setattr(demo, "import_and_rank", fake_import_and_rank)
    environ = dict(os.environ)
    cfg = DemoConfig(workdir=str(tmp_path / "w"), label_studio_bin=str(binary), wait=False)
    summary = run_demo(cfg, secret="s3cret", basic_auth=("a", "b"))
    assert summary == {"project_url": "http://ls.test:1/projects/1"}
    assert dict(os.environ) == environ
    assert calls["import"] == (server, "http://backend.test:2", "s3cret", ("a", "b"))
    assert calls["backend"][1] is server
    assert calls["label_studio"][1] == (tmp_path / "w" / "documents").resolve()
    assert "http://ls.test:1/projects/1" in capsys.readouterr().out


def test_next_steps_name_real_files_a_runnable_command_and_where_start_training_is(tmp_path):
    import shlex
    import subprocess

    log_path = tmp_path / "label-studio" / "label-studio.log"
    server = SimpleNamespace(
        url="http://ls.test:1", username="u", password="p", legacy_token="tok", log_path=log_path
    )
    text = demo.next_steps(server, {}, "http://backend.test:2", tmp_path)
    assert f"Logs: {log_path}, {tmp_path / 'backend.log'}." in text
    assert '"Start Training" in the "..." menu of the model card' in text
    history = next(line for line in text.splitlines() if " history --checkpoint " in line)
    argv = shlex.split(history)
    assert argv[1:] == ["history", "--checkpoint", str(tmp_path / "model.pt")]
    # the printed command runs as printed, from a shell whose PATH lacks the virtualenv
    run = subprocess.run([argv[0], "history", "--help"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert run.returncode == 0 and "history" in run.stdout
    # the printed sync-train command (continued over two lines) parses with the real CLI
    joined = text.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if " sync-train " in line)
    env, binary, *rest = shlex.split(line)
    assert env == "LABEL_STUDIO_API_KEY=tok" and binary == argv[0]
    from robustar_ls.cli.main import get_args_parser

    parsed = get_args_parser().parse_args(rest)
    assert parsed.command == "sync-train" and parsed.project == demo.PROJECT
    assert parsed.checkpoint == str(tmp_path / "model.pt")


def _health_server(answers: list[dict]):
    """/health answering ``answers`` in turn (the last one from then on)."""
    import json
    from http.server import BaseHTTPRequestHandler

    from http_support import local_http_server

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps(answers.pop(0) if len(answers) > 1 else answers[0]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return local_http_server(Health)


def test_the_demo_waits_for_the_backends_ranks_of_its_model_version(monkeypatch, caplog):
    from robustar_ls.workflows import demo

    monkeypatch.setattr(demo.time, "sleep", lambda seconds: None)
    answers = [
        {"prefetch": {"state": "waiting"}},  # the request not taken yet
        {"prefetch": {"influence": {"state": "done", "model_version": "v0-old"}}},
        {"prefetch": {"influence": {"state": "running", "model_version": "v1", "phase": "grad"}}},
        {"prefetch": {"influence": {"state": "done", "model_version": "v1", "scored": 8}}},
    ]
    caplog.set_level("INFO")
    with _health_server(answers) as url:
        assert demo.wait_for_ranks(url, "v1", None)["scored"] == 8
    assert "influence: grad" in caplog.text
    failed = [{"prefetch": {"influence": {"state": "failed", "model_version": "v1",
                                          "error": "DatasetError: no test split"}}}]  # fmt: skip
    with _health_server(failed) as url, pytest.raises(DemoError, match="no test split"):
        demo.wait_for_ranks(url, "v1", None)
