"""Ask the project's ML backend to prefetch predictions of the most influential tasks.

``robustar-ls influence`` calls :func:`request_prefetch` once the new ranks are in Label
Studio: the backend (``POST /prefetch``, :mod:`robustar_ls.backend.prefetch_routes`) then
stores a prediction of its model version for the top N tasks, most influential first. The
backend is found through the project's registered ML backend, or given (``--backend-url``).
A backend that cannot be reached or has the prefetch off is reported, never an error: the
scores are written either way, and the backend prefetches on its next model version anyway.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from robustar_ls.labelstudio import client as ls

log = logging.getLogger(__name__)


def request_prefetch(
    client: Any,
    project_id: int,
    top: int,
    backend_url: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """``{"requested": bool, "backend": url | None, "message": str}``; never raises."""
    url = (backend_url or "").rstrip("/")
    if not url:
        try:
            url = ls.ml_backend_url(client, project_id) or ""
        except ls.LabelStudioError as err:
            return _report(False, None, f"cannot list the project's ML backends: {err}")
    if not url:
        return _report(
            False, None, f"project {project_id} has no ML backend; pass --backend-url to prefetch"
        )
    try:
        answer = httpx.post(
            f"{url}/prefetch",
            json={"project": project_id, "top": top},
            auth=basic_auth,
            timeout=timeout,
        )
    except httpx.HTTPError as err:
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        return _report(False, url, f"cannot reach the ML backend at {url} ({reason})")
    if answer.status_code != 202:
        return _report(False, url, f"the ML backend at {url} answered {answer.status_code}: "
                       f"{_error_of(answer)}")  # fmt: skip
    return _report(True, url, f"the ML backend at {url} prefetches the top {top} tasks")


def _error_of(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:200]
    return str(body.get("error", body))[:200] if isinstance(body, dict) else str(body)[:200]


def _report(requested: bool, url: str | None, message: str) -> dict[str, Any]:
    (log.info if requested else log.warning)("prefetch: %s", message)
    return {"requested": requested, "backend": url, "message": message}
