"""Run the backend under gunicorn (N worker processes) without a separate command line.

Each worker builds its own app (and loads the checkpoint) after the fork, so the master never
holds a model; torch's intra-op threads are divided among the workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

log = logging.getLogger(__name__)


class GunicornServer(BaseApplication):
    """``gunicorn`` driven from Python: ``GunicornServer(factory, options).run()``."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def serve(
    factory: Callable[[], Flask],
    host: str,
    port: int,
    workers: int,
    threads: int = 1,
    timeout: int = 300,
    debug: bool = False,
) -> None:
    """Serve ``factory()``: gunicorn with ``workers`` processes, or Flask's server if ``debug``."""
    if debug:
        log.warning("Flask's development server (--debug): not for production use")
        factory().run(host=host, port=port, debug=False, threaded=False)
        return

    def worker_factory() -> Flask:
        import torch

        torch.set_num_threads(threads_per_worker(workers))
        return factory()

    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "timeout": timeout,
        "graceful_timeout": 30,
        "accesslog": "-",
        "errorlog": "-",
        "preload_app": False,
    }
    GunicornServer(worker_factory, options).run()
