"""The prefetch's side of the HTTP API: ``POST /prefetch``, its status in ``/health``, and
the ``/predict`` answer for tasks deferred at the request's deadline.

``POST /prefetch`` ``{"project": 3, "top": 100}`` (``top`` optional) → 202
``{"status": "queued", "prefetch": {...}}``; 501 when this backend has no prefetch (``serve
--prefetch 0`` or no Label Studio API key). A deferred task is answered with an empty list of
predictions: Label Studio 1.23 stores nothing for it (an error prediction would be stored as an
empty prediction of the current version, and the task never asked for again), asks again
when the task is opened, and the prefetch stores it in the background meanwhile.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request

from robustar_ls.backend.prefetch_state import prefetch_status
from robustar_ls.backend.project_memory import project_id_of

log = logging.getLogger(__name__)


def answer_deferred(
    prefetcher: Any | None, body: dict[str, Any], tasks: list[Any], results: list[Any]
) -> list[Any]:
    """``results`` with each deferred prediction replaced by ``[]``; those tasks go to the
    prefetch."""
    late = [i for i, r in enumerate(results) if isinstance(r, dict) and r.get("deferred")]
    if not late:
        return results
    if prefetcher is not None:
        try:
            prefetcher.defer(project_id_of(body.get("project")), [tasks[i] for i in late])
        except Exception as err:  # the answer matters more than the background queue
            log.error("cannot hand %d deferred tasks to the prefetch: %s", len(late), err)
    deferred = set(late)
    return [[] if i in deferred else r for i, r in enumerate(results)]


def register_prefetch(app: Flask, state: Any) -> None:
    """``POST /prefetch`` (behind basic auth like every route but /health)."""

    @app.post("/prefetch")
    def prefetch():
        body = request.get_json(silent=True, force=True)
        body = body if isinstance(body, dict) else {}
        if state.prefetcher is None:
            message = (
                "prefetch is off on this backend (serve --prefetch 0, or no Label Studio API "
                "key: set LABEL_STUDIO_API_KEY)"
            )
            return jsonify(error=message), 501
        project = project_id_of(body.get("project"))
        top = body.get("top")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 0):
            return jsonify(error="'top' must be a whole number >= 0"), 400
        state.prefetcher.request(project, top)
        log.info("prefetch requested for project %s (top %s)", project, top)
        return jsonify(status="queued", prefetch=prefetch_status(state.prefetcher)), 202
