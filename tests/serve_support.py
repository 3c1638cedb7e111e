"""``robustar-ls serve`` as a real gunicorn process on loopback, for tests that kill workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def health(url: str) -> dict | None:
    try:
        status, body = get_json(url + "/health", timeout=2)
    except OSError:
        return None
    return body if status == 200 else None


@contextmanager
def gunicorn_backend(checkpoint: Path, tmp_path: Path, *extra: str, workers: int = 2):
    """Yield ``(url, process)``; the server is stopped (SIGTERM, then SIGKILL) afterwards."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", ROBUSTAR_LS_SECRET="s" * 32)
    env.pop("BASIC_AUTH_USER", None)
    env.pop("BASIC_AUTH_PASS", None)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "robustar_ls.cli", "serve", "--checkpoint", str(checkpoint)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--no-maskrcnn", "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    process = subprocess.Popen([*command, *extra], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: health(url) or process.poll() is not None, 180, "the server to start")
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def server_log(tmp_path: Path) -> str:
    return (tmp_path / "serve.log").read_text(errors="replace")
