"""The weights fetcher: local HTTP server only (tests never download from the internet)."""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading

import pytest

from robustar_ls.models.weights_download import (
    DownloadFailed,
    expected_hash_prefix,
    fetch_once,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PREFIX = hashlib.sha256(PAYLOAD).hexdigest()[:8]


class Server:
    """A loopback HTTP server: ``/w-<prefix>.pth`` (good), ``/bad-0000abcd.pth`` (hash
    mismatch), ``/short.pth`` (fewer bytes than announced), ``/slow.pth`` (waits)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.hits.append(self.path)
                if self.path == "/slow.pth":
                    outer.release.wait(5)
                body = PAYLOAD
                length = len(body) + (100 if self.path == "/short.pth" else 0)
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_hash_prefix_follows_torch_hub():
    assert expected_hash_prefix("https://x/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth") == (
        "73cbd019"
    )
    assert expected_hash_prefix("https://x/weights.pth") is None


def test_downloads_once_with_progress_and_hash_check(server, tmp_path, caplog):
    dest = tmp_path / "hub" / "checkpoints" / f"w-{PREFIX}.pth"
    with caplog.at_level(logging.INFO):
        assert fetch_once(f"{server.url}/w-{PREFIX}.pth", dest, timeout=5) is True
    assert dest.read_bytes() == PAYLOAD
    assert "100%" in caplog.text and "1 MB" in caplog.text
    assert fetch_once(f"{server.url}/w-{PREFIX}.pth", dest, timeout=5) is False
    assert server.hits == [f"/w-{PREFIX}.pth"]  # the second call found the file


@pytest.mark.parametrize(
    ("name", "reason"),
    [("bad-0000abcd.pth", "does not start with 0000abcd"), ("short.pth", "short.pth")],
)
def test_a_bad_download_leaves_no_file(server, tmp_path, name, reason):
    dest = tmp_path / "maskrcnn-73cbd019.pth"
    with pytest.raises(DownloadFailed, match=reason):
        fetch_once(f"{server.url}/{name}", dest, timeout=5)
    assert leftovers(tmp_path) == [f"{dest.name}.failed"]  # no file, no .partial


def test_an_unreachable_host_fails_in_one_clear_error(tmp_path):
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadFailed, match=r"cannot download http://127\.0\.0\.1:9/w\.pth"):
        fetch_once("http://127.0.0.1:9/w.pth", dest, timeout=2)
    assert not dest.exists()


def test_concurrent_callers_make_one_download(server, tmp_path):
    dest = tmp_path / "w.pth"
    results: list[bool] = []
    callers = [
        threading.Thread(target=lambda: results.append(fetch_once(f"{server.url}/slow.pth", dest)))
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    server.release.set()
    for caller in callers:
        caller.join(10)
    assert sorted(results) == [False, False, True]
    assert server.hits == ["/slow.pth"] and dest.read_bytes() == PAYLOAD


def test_a_failure_seen_while_waiting_is_not_retried(server, tmp_path):
    dest = tmp_path / "w-0000abcd.pth"
    errors: list[str] = []

    def call():
        try:
            fetch_once(f"{server.url}/bad-0000abcd.pth", dest, timeout=5)
        except DownloadFailed as err:
            errors.append(str(err))

    callers = [threading.Thread(target=call) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    assert len(errors) == 2 and sum("another process tried" in e for e in errors) == 1
    assert server.hits == ["/bad-0000abcd.pth"]
