"""Load check: concurrent ``/predict`` through the real server (gunicorn) on loopback.

Run from the repository root::

    OMP_NUM_THREADS=1 python bench/bench_load.py [--workers 2] [--threads 4] [--concurrency 8]
        [--requests 200] [--baseline 30] [--tasks-per-request 2] [--max-seconds 180]

Starts ``robustar-ls serve --no-maskrcnn`` on 127.0.0.1 (a small-ResNet checkpoint, synthetic
PNGs under a temporary document root, prediction cache off so every request runs the model),
then in one run:

1. **baseline**: ``--baseline`` requests one after another (concurrency 1);
2. **load**: ``--requests`` requests from ``--concurrency`` client threads, stopping early at
   ``--max-seconds``; meanwhile a client polls ``/health`` every 0.1 s.

Reports p50 / p99 latency of both phases and their ratio, throughput under load ÷ baseline,
``/health`` p50 under load ÷ idle, errors (non-200 or connection failures), and each worker's
resident memory (VmRSS) before and after the load. A table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from common import REPO, make_parser
from PIL import Image

from robustar_ls.models.checkpoint import save_checkpoint
from robustar_ls.models.zoo import create_classifier


def get_args_parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--baseline", type=int, default=30)
    p.add_argument("--tasks-per-request", dest="tasks_per_request", type=int, default=2)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--max-seconds", dest="max_seconds", type=float, default=180.0)
    return p


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_inputs(root: Path, args: argparse.Namespace) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(0)
    refs = []
    for i in range(args.images):
        rel = f"ds/train/c{i % 4}/{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / rel)
        refs.append(f"/data/local-files/?d={rel}")
    torch.manual_seed(0)
    checkpoint = root.parent / "model.pt"
    model = create_classifier("resnet18_small", 4, width=16)
    save_checkpoint(
        checkpoint,
        model,
        arch="resnet18_small",
        classes=[f"c{i}" for i in range(4)],
        image_size=32,
        width=16,
    )
    return checkpoint, refs


def worker_rss_mb(master: int) -> dict[int, float]:
    """VmRSS (MB) of each direct child of ``master`` (the gunicorn workers)."""
    rss = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != master:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[int(entry.name)] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return rss


def post(url: str, body: dict, timeout: float = 120.0) -> tuple[bool, float]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
            ok = resp.status == 200
    except OSError:
        ok = False
    return ok, time.perf_counter() - start


def get(url: str) -> tuple[bool, float]:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            resp.read()
            ok = resp.status == 200
    except OSError:
        ok = False
    return ok, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def start_server(checkpoint: Path, root: Path, port: int, args, log) -> subprocess.Popen:
    settings = root.parent / "settings.yaml"
    settings.write_text(f"serve:\n  prediction_cache_size: 0\n  threads: {args.threads}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "robustar_ls.cli", "serve", "--config", str(settings)]
    command += ["--checkpoint", str(checkpoint), "--document-root", str(root), "--device", "cpu"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
    command += ["--no-maskrcnn", "--cache-dir", str(root.parent / "cache")]
    return subprocess.Popen(command, env=env, stdout=log, stderr=log)


def run_load(url: str, refs: list[str], args) -> dict:
    def body(i: int) -> dict:
        n = args.tasks_per_request
        return {
            "tasks": [
                {"id": i * n + k, "data": {"image": refs[(i * n + k) % len(refs)]}}
                for k in range(n)
            ]
        }

    idle_health = [get(url + "/health")[1] for _ in range(10)]
    start = time.perf_counter()
    baseline = [post(url + "/predict", body(i)) for i in range(args.baseline)]
    baseline_s = time.perf_counter() - start

    stop, health = threading.Event(), []

    def poll_health():
        while not stop.is_set():
            health.append(get(url + "/health"))
            time.sleep(0.1)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    deadline = time.perf_counter() + args.max_seconds

    def one(i: int) -> tuple[bool, float] | None:
        return None if time.perf_counter() > deadline else post(url + "/predict", body(i))

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        loaded = [r for r in pool.map(one, range(args.requests)) if r is not None]
    load_s = time.perf_counter() - start
    stop.set()
    poller.join()
    return {
        "idle_health": idle_health,
        "baseline": baseline,
        "baseline_s": baseline_s,
        "loaded": loaded,
        "load_s": load_s,
        "health": health,
    }


def summarise(raw: dict, rss_before: dict, rss_after: dict, args) -> dict:
    ok_base = [t for ok, t in raw["baseline"] if ok]
    ok_load = [t for ok, t in raw["loaded"] if ok]
    health_load = [t for ok, t in raw["health"] if ok]
    errors = sum(not ok for ok, _ in raw["baseline"] + raw["loaded"])
    return {
        "workers": args.workers,
        "threads": args.threads,
        "concurrency": args.concurrency,
        "tasks_per_request": args.tasks_per_request,
        "requests": len(raw["loaded"]),
        "baseline_requests": len(raw["baseline"]),
        "errors": errors,
        "health_errors": sum(not ok for ok, _ in raw["health"]),
        "baseline_p50_ms": pct(ok_base, 50),
        "baseline_p99_ms": pct(ok_base, 99),
        "load_p50_ms": pct(ok_load, 50),
        "load_p99_ms": pct(ok_load, 99),
        "p50_ratio": pct(ok_load, 50) / pct(ok_base, 50),
        "throughput_ratio": (len(ok_load) / raw["load_s"]) / (len(ok_base) / raw["baseline_s"]),
        "health_p50_ms_idle": pct(raw["idle_health"], 50),
        "health_p50_ms_load": pct(health_load, 50),
        "health_p99_ms_load": pct(health_load, 99),
        "rss_mb_before": sorted(round(v) for v in rss_before.values()),
        "rss_mb_after": sorted(round(v) for v in rss_after.values()),
    }


def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "docroot"
        checkpoint, refs = make_inputs(root, args)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(Path(tmp) / "serve.log", "wb") as log:
            server = start_server(checkpoint, root, port, args, log)
            try:
                deadline = time.monotonic() + 180
                while not get(url + "/health")[0]:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit((Path(tmp) / "serve.log").read_text()[-3000:])
                    time.sleep(0.5)
                post(url + "/predict", {"tasks": [{"id": 0, "data": {"image": refs[0]}}]})
                rss_before = worker_rss_mb(server.pid)
                raw = run_load(url, refs, args)
                rss_after = worker_rss_mb(server.pid)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
    result = summarise(raw, rss_before, rss_after, args)
    print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'/predict, one at a time':28}{result['baseline_p50_ms']:10.1f}"
        f"{result['baseline_p99_ms']:10.1f}"
    )
    print(
        f"{f'/predict, {args.concurrency} concurrent':28}{result['load_p50_ms']:10.1f}"
        f"{result['load_p99_ms']:10.1f}"
    )
    print(
        f"{'/health under load':28}{result['health_p50_ms_load']:10.1f}"
        f"{result['health_p99_ms_load']:10.1f}"
    )
    print(
        f"p50 ratio {result['p50_ratio']:.2f}, throughput ratio "
        f"{result['throughput_ratio']:.2f}, errors {result['errors']}, worker RSS MB "
        f"{result['rss_mb_before']} -> {result['rss_mb_after']}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
