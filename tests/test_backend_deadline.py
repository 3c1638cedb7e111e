"""Slow image URLs: a per-request deadline, bounded parallel fetches, a JSON error per failed
task (issue 10, item 3)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from backend_support import make_backend, png_bytes, task, two_tone, use_settings

from robustar_ls.backend.url_policy import UrlPolicy


@contextmanager
def slow_server(delay_s: float):
    """Serves a PNG at any path after ``delay_s``; records the most requests in flight."""
    state = {"now": 0, "most": 0, "lock": threading.Lock()}
    body = png_bytes(two_tone())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with state["lock"]:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(delay_s)
            with state["lock"]:
                state["now"] -= 1
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up at its deadline
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def allow(backend, host):
    fetcher = backend.predictor.fetcher
    fetcher.policy = UrlPolicy(fetcher.label_studio_url, [host])


def test_a_slow_image_gets_a_deadline_error_and_its_neighbours_their_predictions(tmp_path):
    backend = make_backend(tmp_path, segmenter=False)
    with slow_server(3.0) as (host, _):
        allow(backend, host)
        use_settings(backend, request_deadline=0.5)
        tasks = [
            {"id": 1, "data": {"image": f"http://{host}/slow.png"}},
            task("ds/train/circle/c0.png", task_id=2),
            {"id": 3, "data": {}},
        ]
        response = backend.client.post("/predict", json={"tasks": tasks})
    assert response.status_code == 200
    slow, good, empty = response.get_json()["results"]
    assert slow["result"] == [] and "deadline of 0.5 s passed" in slow["error"]
    assert good["result"] and "error" not in good
    assert empty["result"] == [] and "no image under $image" in empty["error"]


def test_images_are_fetched_in_parallel_but_bounded(tmp_path):
    backend = make_backend(tmp_path, segmenter=False, batch_size=8)
    with slow_server(0.3) as (host, state):
        allow(backend, host)
        use_settings(backend, fetch_parallelism=3)
        tasks = [{"id": i, "data": {"image": f"http://{host}/{i}.png"}} for i in range(7)]
        response = backend.client.post("/predict", json={"tasks": tasks})
    results = response.get_json()["results"]
    assert all(r["result"] and "error" not in r for r in results)
    assert 1 < state["most"] <= 3
