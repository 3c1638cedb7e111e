"""The Label Studio project a workflow works on: found by title; heatmap links for its tasks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustar_ls.config import LabelStudioConfig
from robustar_ls.errors import RobustarError
from robustar_ls.labelstudio import client as ls_client
from robustar_ls.labelstudio.urls import DEFAULT_URL_LIFETIME_S


class ProjectNotFound(RobustarError, LookupError):
    """No Label Studio project has the configured title."""


def project_id_of(project: Any) -> int:
    pid = project.get("id") if isinstance(project, dict) else getattr(project, "id", None)
    if pid is None:
        raise ValueError(f"Label Studio project {project!r} has no id")
    return int(pid)


def project_id(client: Any, label_studio: LabelStudioConfig) -> int:
    """The id of the project titled ``label_studio.project``; :class:`ProjectNotFound` if none."""
    project = ls_client.find_project(client, label_studio.project)
    if project is None:
        raise ProjectNotFound(
            f"no Label Studio project titled {label_studio.project!r} at {label_studio.url}; "
            "create it with `robustar-ls import`"
        )
    return project_id_of(project)


def saliency_links(
    base_url: str,
    secret: str,
    cache_dir: str | Path | None = None,
    lifetime_s: float = DEFAULT_URL_LIFETIME_S,
) -> Callable[[str], str] | None:
    """Signed heatmap URLs for task data (same key as the backend's ``serve``), or None without
    a backend URL. ``secret``: ROBUSTAR_LS_SECRET ("" = the key file in ``cache_dir``)."""
    from robustar_ls.config import default_cache_dir
    from robustar_ls.labelstudio.urls import resolve_secret, saliency_url

    if not base_url:
        return None
    key = resolve_secret(secret, cache_dir or default_cache_dir())
    return lambda image_ref: saliency_url(base_url, image_ref, key, lifetime_s)
