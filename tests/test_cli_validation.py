"""Bad command-line input is one line, never a traceback, and never starts a run (issue 10,
item 7)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from backend_support import png_bytes, two_tone

from robustar_ls.cli import main
from robustar_ls.config import ConfigError, TrainConfig, build
from robustar_ls.data.masks import MaskError, MaskStore


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--data", "d", "--out", "m.pt", "--batch-size", "0"], "--batch-size"),
        (["train", "--data", "d", "--out", "m.pt", "--epochs", "0"], "--epochs"),
        (["train", "--data", "d", "--out", "m.pt", "--epochs", "-1"], "--epochs"),
        (["train", "--data", "d", "--out", "m.pt", "--lr", "nan"], "--lr"),
        (["sync-train", "--data", "d", "--checkpoint", "m.pt", "--lr", "-5"], "--lr"),
        (["sync-train", "--data", "d", "--checkpoint", "m.pt", "--epochs", "-1"], "--epochs"),
        (["sync-train", "--data", "d", "--checkpoint", "m.pt", "--worst-of", "0"], "--worst-of"),
        (["make-dataset", "out", "--bias", "1.5"], "--bias"),
        (["make-dataset", "out", "--per-class", "abc"], "is not an integer"),
        (["serve", "--checkpoint", "m.pt", "--port", "70000"], "--port"),
        (["serve", "--checkpoint", "m.pt", "--request-deadline", "0"], "--request-deadline"),
        (["influence", "--data", "d", "--checkpoint", "m.pt", "--k", "0"], "--k"),
    ],
)
def test_numeric_options_are_validated_at_parse_time(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: argument" in err and fragment in err


@pytest.mark.parametrize("where", ["folder", "/proc/nope/x.pt"])
def test_an_unwritable_out_fails_before_training(tmp_path, where, capsys):
    out = str(tmp_path) if where == "folder" else where
    assert main(["train", "--data", str(tmp_path / "none"), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("is a folder" in err or "cannot write" in err)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"epochs": "abc"}, "'epochs' of TrainConfig must be an integer, not 'abc'"),
        ({"lr": "fast"}, "'lr' of TrainConfig must be a number"),
        ({"augment": "yes"}, "must be true or false"),
        ({"epochs": 0}, "'epochs' must be at least 1"),
    ],
)
def test_settings_file_type_errors_are_one_line(section, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build(TrainConfig, section)


def test_settings_file_error_through_the_cli(tmp_path, capsys):
    settings = tmp_path / "s.yaml"
    settings.write_text("train:\n  epochs: abc\n")
    argv = ["train", "--config", str(settings), "--data", str(tmp_path), "--out", "m.pt"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be an integer, not 'abc'" in err


def test_a_manifest_holding_a_list_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(MaskError, match="not a JSON object of mask records"):
        MaskStore(tmp_path).read_manifest()


@contextmanager
def png_server():
    body = png_bytes(two_tone())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_label_studio_url_answering_a_png_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "abc")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with png_server() as url:
        argv = ["import", "--data", str(tmp_path), "--label-studio-url", url, "-q"]
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not answer like Label Studio" in err
